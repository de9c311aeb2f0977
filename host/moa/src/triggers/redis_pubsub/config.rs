//! The Redis pub/sub trigger's part of spin.toml (Spin's syntax): `[[trigger.redis]]` entries with
//! a `channel`, and the server from the entry's `address` or `[application.trigger.redis] address`.

use moa_manifest::{LoadedManifest, ManifestError, Position};

/// One `[[trigger.redis]]` entry: messages published on `channel` at `address` go to `component`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTrigger {
    pub component: String,
    pub channel: String,
    /// `redis://` or `rediss://` URL of the server.
    pub address: String,
    pub position: Position,
}

fn check_address(
    app: &LoadedManifest,
    position: Position,
    address: &str,
    what: &str,
) -> Result<(), ManifestError> {
    let parsed = address.parse::<http::Uri>().ok();
    let valid = parsed.is_some_and(|uri| {
        matches!(uri.scheme_str(), Some("redis" | "rediss")) && uri.host().is_some()
    });
    if valid {
        return Ok(());
    }
    Err(ManifestError::Invalid {
        path: app.path.clone(),
        position: Some(position),
        message: format!("{what} `{address}` is not a Redis address"),
        help: "write `address = \"redis://host:6379\"` (or rediss:// for TLS)".into(),
    })
}

/// Every Redis trigger entry of the app, checked.
pub fn from_manifest(app: &LoadedManifest) -> Result<Vec<RedisTrigger>, ManifestError> {
    let path = &app.path;
    let settings = app.manifest.trigger_settings.get("redis");
    if let Some(settings) = settings
        && let Some(unknown) = settings.keys().find(|key| key.as_str() != "address")
    {
        return Err(ManifestError::Invalid {
            path: path.clone(),
            position: None,
            message: format!("[application.trigger.redis] has unknown field `{unknown}`"),
            help: "[application.trigger.redis] takes: address".into(),
        });
    }
    let app_address = match settings.and_then(|s| s.get("address")) {
        None => None,
        Some(value) => match value.as_str() {
            Some(address) => Some(address.to_string()),
            None => {
                return Err(ManifestError::Invalid {
                    path: path.clone(),
                    position: None,
                    message: "[application.trigger.redis] `address` must be a string".into(),
                    help: "write `address = \"redis://host:6379\"`".into(),
                });
            }
        },
    };
    let mut triggers = Vec::new();
    for entry in app.manifest.triggers_of("redis") {
        entry.check_fields(path, &["channel", "address"], |unknown| {
            matches!(unknown, "topic" | "stream")
                .then(|| "Spin's Redis trigger listens on a pub/sub `channel`; for Redis Streams use [[trigger.redis-stream]]".to_string())
        })?;
        let Some(channel) = entry.get::<String>(path, "channel")? else {
            return Err(entry.error(
                path,
                entry.position,
                format!(
                    "[[trigger.redis]] for `{}` has no `channel`",
                    entry.component
                ),
                "add `channel = \"<pub/sub channel>\"`",
            ));
        };
        if channel.value.trim().is_empty() {
            return Err(entry.error(
                path,
                channel.position,
                "[[trigger.redis]] `channel` is empty",
                "name the pub/sub channel the component listens on",
            ));
        }
        let address = match entry.get::<String>(path, "address")? {
            Some(address) => {
                check_address(
                    app,
                    address.position,
                    &address.value,
                    "[[trigger.redis]] `address`",
                )?;
                address.value
            }
            None => match &app_address {
                Some(address) => {
                    check_address(
                        app,
                        entry.position,
                        address,
                        "[application.trigger.redis] `address`",
                    )?;
                    address.clone()
                }
                None => {
                    return Err(entry.error(
                        path,
                        entry.position,
                        format!(
                            "[[trigger.redis]] for `{}` has no Redis server to listen on",
                            entry.component
                        ),
                        "add `[application.trigger.redis]` with `address = \"redis://host:6379\"`, or `address` on this entry",
                    ));
                }
            },
        };
        triggers.push(RedisTrigger {
            component: entry.component.clone(),
            channel: channel.value,
            address,
            position: entry.position,
        });
    }
    Ok(triggers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const APP: &str = "spin_manifest_version = 2\n[application]\nname = \"shop\"\n";
    const COMPONENT: &str = "[component.sub]\nsource = \"a.wasm\"\n";

    fn load(app_settings: &str, entries: &str) -> Result<Vec<RedisTrigger>, ManifestError> {
        let manifest = moa_manifest::parse(
            Path::new("spin.toml"),
            &format!("{APP}{app_settings}{entries}{COMPONENT}"),
            moa_manifest::HostKeys {
                component_keys: &[],
                trigger_kinds: &["redis"],
            },
        )?;
        from_manifest(&LoadedManifest {
            path: "spin.toml".into(),
            base_dir: ".".into(),
            manifest,
        })
    }

    fn err(app_settings: &str, entries: &str) -> String {
        load(app_settings, entries).unwrap_err().to_string()
    }

    #[test]
    fn spin_redis_entries_take_the_app_address_or_their_own() {
        let triggers = load(
            "[application.trigger.redis]\naddress = \"redis://cache:6379\"\n",
            "[[trigger.redis]]\ncomponent = \"sub\"\nchannel = \"orders\"\n[[trigger.redis]]\ncomponent = \"sub\"\nchannel = \"audit\"\naddress = \"rediss://other:6380/1\"\n",
        )
        .unwrap();
        assert_eq!(triggers.len(), 2);
        assert_eq!(
            (triggers[0].channel.as_str(), triggers[0].address.as_str()),
            ("orders", "redis://cache:6379")
        );
        assert_eq!(
            (triggers[1].channel.as_str(), triggers[1].address.as_str()),
            ("audit", "rediss://other:6380/1")
        );
    }

    #[test]
    fn bad_redis_entries_say_what_to_write() {
        let no_address = err(
            "",
            "[[trigger.redis]]\ncomponent = \"sub\"\nchannel = \"c\"\n",
        );
        assert!(no_address.contains("no Redis server"), "{no_address}");
        assert!(
            no_address.contains("[application.trigger.redis]"),
            "{no_address}"
        );
        let app = "[application.trigger.redis]\naddress = \"redis://r:6379\"\n";
        let no_channel = err(app, "[[trigger.redis]]\ncomponent = \"sub\"\n");
        assert!(no_channel.contains("has no `channel`"), "{no_channel}");
        let stream = err(
            app,
            "[[trigger.redis]]\ncomponent = \"sub\"\nchannel = \"c\"\nstream = \"s\"\n",
        );
        assert!(stream.contains("[[trigger.redis-stream]]"), "{stream}");
        let http = err(
            "[application.trigger.redis]\naddress = \"http://r:6379\"\n",
            "[[trigger.redis]]\ncomponent = \"sub\"\nchannel = \"c\"\n",
        );
        assert!(http.contains("is not a Redis address"), "{http}");
    }
}
