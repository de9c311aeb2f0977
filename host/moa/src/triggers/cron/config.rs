//! The cron trigger's part of spin.toml: `[[trigger.cron]]` entries (Spin's syntax: `component`
//! and a six-field `cron_expression` with seconds; moa's `job` to start a batch job), checked at load.

use moa_manifest::{LoadedManifest, ManifestError, Position};
use std::str::FromStr as _;

/// One `[[trigger.cron]]` entry: call `component`'s `handle-cron-event` on `schedule`.
#[derive(Debug, Clone)]
pub struct CronTrigger {
    pub component: String,
    /// As written, for the banner and logs.
    pub expression: String,
    pub schedule: cron::Schedule,
    /// Start an execution of this `[[trigger.job]]` instead of calling `handle-cron-event`.
    pub job: Option<String>,
    pub position: Position,
}

/// Every cron trigger entry of the app, checked.
pub fn from_manifest(app: &LoadedManifest) -> Result<Vec<CronTrigger>, ManifestError> {
    let path = &app.path;
    let mut triggers = Vec::new();
    for entry in app.manifest.triggers_of("cron") {
        entry.check_fields(path, &["cron_expression", "job"], |unknown| {
            (unknown == "schedule" || unknown == "cron")
                .then(|| "write `cron_expression = \"0 */5 * * * *\"`".to_string())
        })?;
        let Some(expression) = entry.get::<String>(path, "cron_expression")? else {
            return Err(entry.error(
                path,
                entry.position,
                format!(
                    "[[trigger.cron]] for `{}` has no `cron_expression`",
                    entry.component
                ),
                "add `cron_expression = \"<sec> <min> <hour> <day> <month> <weekday>\"`, e.g. \"*/10 * * * * *\" for every 10 seconds",
            ));
        };
        let schedule = cron::Schedule::from_str(expression.value.trim()).map_err(|error| {
            entry.error(
                path,
                expression.position,
                format!(
                    "[[trigger.cron]] `cron_expression = \"{}\"` is not a cron expression: {error}",
                    expression.value
                ),
                "write six fields with seconds first: `<sec> <min> <hour> <day> <month> <weekday>`, e.g. \"0 */5 * * * *\" for every five minutes",
            )
        })?;
        if schedule.upcoming(chrono::Utc).next().is_none() {
            return Err(entry.error(
                path,
                expression.position,
                format!(
                    "[[trigger.cron]] `cron_expression = \"{}\"` never fires again",
                    expression.value
                ),
                "give a schedule with future times",
            ));
        }
        let job = entry.get::<String>(path, "job")?.map(|j| j.value);
        triggers.push(CronTrigger {
            component: entry.component.clone(),
            expression: expression.value,
            schedule,
            job,
            position: entry.position,
        });
    }
    Ok(triggers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const APP: &str = "spin_manifest_version = 2\n[application]\nname = \"shop\"\n[component.sweeper]\nsource = \"a.wasm\"\n";

    fn load(entries: &str) -> Result<Vec<CronTrigger>, ManifestError> {
        let manifest = moa_manifest::parse(
            Path::new("spin.toml"),
            &format!("{APP}{entries}"),
            moa_manifest::HostKeys {
                component_keys: &[],
                trigger_kinds: &["cron"],
            },
        )?;
        from_manifest(&LoadedManifest {
            path: "spin.toml".into(),
            base_dir: ".".into(),
            manifest,
        })
    }

    fn err(entries: &str) -> String {
        load(entries).unwrap_err().to_string()
    }

    #[test]
    fn spin_cron_entries_are_read() {
        let triggers = load(
            "[[trigger.cron]]\ncomponent = \"sweeper\"\ncron_expression = \"1/2 * * * * *\"\n",
        )
        .unwrap();
        assert_eq!(triggers.len(), 1);
        assert_eq!(triggers[0].component, "sweeper");
        let mut times = triggers[0].schedule.upcoming(chrono::Utc).take(3);
        let (a, b) = (times.next().unwrap(), times.next().unwrap());
        assert_eq!((b - a).num_seconds(), 2, "every two seconds");
    }

    #[test]
    fn bad_cron_entries_say_how_to_write_them() {
        let missing = err("[[trigger.cron]]\ncomponent = \"sweeper\"\n");
        assert!(missing.contains("has no `cron_expression`"), "{missing}");
        let bad =
            err("[[trigger.cron]]\ncomponent = \"sweeper\"\ncron_expression = \"every minute\"\n");
        assert!(bad.contains("is not a cron expression"), "{bad}");
        assert!(bad.contains("seconds first"), "{bad}");
        let renamed =
            err("[[trigger.cron]]\ncomponent = \"sweeper\"\nschedule = \"* * * * * *\"\n");
        assert!(renamed.contains("cron_expression = "), "{renamed}");
        let past = err(
            "[[trigger.cron]]\ncomponent = \"sweeper\"\ncron_expression = \"0 0 0 1 1 * 2001\"\n",
        );
        assert!(past.contains("never fires again"), "{past}");
    }
}
