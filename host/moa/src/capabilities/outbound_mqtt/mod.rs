//! Outbound MQTT: Spin's `spin:mqtt/mqtt@3.0.0` (`spin_sdk::mqtt`; Spin 2's 2.0.0 too), one MQTT
//! connection per `open` (as Spin makes them); `open` needs an `mqtt://host:port` allow-list entry
//! and connects nowhere else.
//!
//! `publish` returns when the broker has the message as the QoS promises it: at-most-once once it
//! is written, at-least-once on PUBACK, exactly-once on PUBCOMP.

use super::outbound_http::AllowedHosts;
use crate::capabilities::{
    Capability, ComponentContext, ConfigureContext, HasCapability, InstanceParts,
};
use bindings::spin::mqtt::mqtt::{self as spin_mqtt, Error, Qos};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use wasmtime::component::{Accessor, HasData, Linker, Resource, ResourceTable};

mod legacy;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/outbound-mqtt",
        imports: { default: trappable },
        with: {
            "spin:mqtt/mqtt.connection": super::OpenConnection,
        },
    });
}

/// How long `open` waits for the broker's CONNACK, and `publish` for its acknowledgement.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most MQTT connections one instance may hold open.
const MAX_CONNECTIONS: usize = 16;
/// Largest message a component may publish (the broker may allow less).
const MAX_PAYLOAD: usize = 8 << 20;

/// What the connection's event-loop task reports to `open` and `publish`.
#[derive(Debug)]
enum Report {
    /// The broker accepted the connection (CONNACK).
    Connected,
    /// A PUBLISH went out with this packet id (0 for QoS 0).
    Sent(u16),
    /// The broker acknowledged packet id (PUBACK for QoS 1, PUBCOMP for QoS 2).
    Acked(u16),
    /// The connection failed; nothing more will come.
    Failed(String),
}

/// The value behind a `connection` resource handle.
pub struct OpenConnection {
    client: AsyncClient,
    /// One publish at a time reads the reports, so each finds its own packet id.
    reports: Arc<Mutex<mpsc::UnboundedReceiver<Report>>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        // The event loop owns the socket: stopping it closes the connection.
        self.driver.abort();
    }
}

/// Marker type naming this capability in the linker.
pub struct OutboundMqtt;

impl HasData for OutboundMqtt {
    type Data<'a> = OutboundMqttView<'a>;
}

/// What the host traits see of an instance's state.
pub struct OutboundMqttView<'a> {
    pub allowed: &'a AllowedHosts,
    pub component: &'a str,
    pub table: &'a mut ResourceTable,
    pub open: &'a mut usize,
}

/// Spin's outbound MQTT, allowed per `mqtt://` entry of `allowed_outbound_hosts`.
pub struct OutboundMqttCapability;

/// One component's allow-list.
pub struct OutboundMqttGrant {
    allowed: Arc<AllowedHosts>,
    component: Arc<str>,
}

/// Per instance: the grant and how many connections are open.
pub struct OutboundMqttInstance {
    grant: Arc<OutboundMqttGrant>,
    open: usize,
}

impl Capability for OutboundMqttCapability {
    const NAME: &'static str = "outbound-mqtt";
    const IMPORTS: &'static [&'static str] = &["spin:mqtt@3.0.0", "fermyon:spin/mqtt@2.0.0"];

    type AppState = ();
    type ComponentState = Arc<OutboundMqttGrant>;
    type InstanceState = OutboundMqttInstance;
    type View<'a> = OutboundMqttView<'a>;

    fn link<T: HasCapability<Self> + Send + 'static>(linker: &mut Linker<T>) -> anyhow::Result<()> {
        spin_mqtt::add_to_linker::<T, OutboundMqtt>(linker, T::capability_view)?;
        legacy::add_to_linker(linker, T::capability_view)?;
        Ok(())
    }

    async fn configure(_cx: &ConfigureContext<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn component(_app: &(), cx: &ComponentContext<'_>) -> anyhow::Result<Arc<OutboundMqttGrant>> {
        Ok(Arc::new(OutboundMqttGrant {
            allowed: cx.allowed_hosts.clone(),
            component: cx.component.id.as_str().into(),
        }))
    }

    fn instance(grant: &Arc<OutboundMqttGrant>) -> OutboundMqttInstance {
        OutboundMqttInstance {
            grant: grant.clone(),
            open: 0,
        }
    }

    fn view<'a>(parts: InstanceParts<'a, OutboundMqttInstance>) -> OutboundMqttView<'a> {
        OutboundMqttView {
            allowed: &parts.state.grant.allowed,
            component: &parts.state.grant.component,
            table: parts.table,
            open: &mut parts.state.open,
        }
    }
}

/// `mqtt://host[:port][?client_id=...]`: the broker and the client id to connect as (Spin's syntax).
fn parse_address(address: &str) -> Option<(http::Uri, String, u16, String)> {
    let uri: http::Uri = address.parse().ok()?;
    if uri.scheme_str() != Some("mqtt") {
        return None;
    }
    let host = uri.host()?.to_string();
    let port = uri.port_u16().unwrap_or(1883);
    let client_id = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("client_id="))
        .map(str::to_string)
        .unwrap_or_else(|| format!("moa-{}", uuid::Uuid::new_v4().simple()));
    Some((uri, host, port, client_id))
}

/// Drives the connection: forwards what `publish` waits for, ends at the first failure.
async fn drive(mut events: EventLoop, reports: mpsc::UnboundedSender<Report>) {
    loop {
        let report = match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Report::Sent(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Report::Acked(ack.pkid),
            Ok(Event::Incoming(Packet::PubComp(comp))) => Report::Acked(comp.pkid),
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != rumqttc::ConnectReturnCode::Success {
                    let _ = reports.send(Report::Failed(format!(
                        "the broker refused: {:?}",
                        ack.code
                    )));
                    return;
                }
                Report::Connected
            }
            Ok(_) => continue,
            Err(err) => {
                let _ = reports.send(Report::Failed(err.to_string()));
                return;
            }
        };
        if reports.send(report).is_err() {
            return;
        }
    }
}

fn qos(qos: Qos) -> QoS {
    match qos {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

impl spin_mqtt::Host for OutboundMqttView<'_> {}

impl spin_mqtt::HostConnection for OutboundMqttView<'_> {
    fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        let connection = self.table.delete(handle)?;
        *self.open = self.open.saturating_sub(1);
        // Let the broker know, then stop the event loop (dropping the connection does that).
        let _ = connection.client.try_disconnect();
        Ok(())
    }
}

impl OutboundMqttView<'_> {
    /// The broker and client id of `address` if the component may connect there and has room for
    /// another connection (what `open` checks before connecting, in 3.0.0 and 2.0.0).
    fn check_open(&self, address: &str) -> Result<(String, u16, String), Error> {
        let Some((uri, host, port, client_id)) = parse_address(address) else {
            return Err(Error::InvalidAddress);
        };
        if !self.allowed.allows_uri(&uri) {
            tracing::warn!(component = self.component, address = %uri, "MQTT connection denied: not in allowed_outbound_hosts");
            return Err(Error::ConnectionFailed(format!(
                "mqtt://{host}:{port} is not in this component's allowed_outbound_hosts"
            )));
        }
        if *self.open >= MAX_CONNECTIONS {
            return Err(Error::TooManyConnections);
        }
        Ok((host, port, client_id))
    }

    /// Keeps a new connection in the instance's table.
    fn register(&mut self, connection: OpenConnection) -> Result<Resource<OpenConnection>, Error> {
        match self.table.push(connection) {
            Ok(handle) => {
                *self.open += 1;
                Ok(handle)
            }
            Err(_) => Err(Error::TooManyConnections),
        }
    }

    /// The client and reports of an open connection.
    fn publisher(
        &self,
        handle: &Resource<OpenConnection>,
    ) -> wasmtime::Result<(AsyncClient, Arc<Mutex<mpsc::UnboundedReceiver<Report>>>)> {
        let connection = self.table.get(handle)?;
        Ok((connection.client.clone(), connection.reports.clone()))
    }
}

/// Connects to the broker and waits for its CONNACK, so a wrong address or password fails in
/// `open`, where the component can handle it.
async fn connect(
    (host, port, client_id): (String, u16, String),
    username: String,
    password: String,
    keep_alive_interval_in_secs: u64,
) -> Result<OpenConnection, Error> {
    let mut options = MqttOptions::new(client_id, host, port);
    // MQTT's keep alive is 16 bits of seconds; 0 turns it off.
    let keep_alive = keep_alive_interval_in_secs.min(u64::from(u16::MAX));
    options.set_keep_alive(Duration::from_secs(keep_alive));
    options.set_max_packet_size(MAX_PAYLOAD + 64 * 1024, MAX_PAYLOAD + 64 * 1024);
    if !username.is_empty() || !password.is_empty() {
        options.set_credentials(username, password);
    }
    let (client, events) = AsyncClient::new(options, 64);
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let driver = tokio::spawn(drive(events, reports_tx));
    let connected = tokio::time::timeout(BROKER_TIMEOUT, reports.recv()).await;
    let failure = match connected {
        Ok(Some(Report::Connected)) => None,
        Ok(Some(Report::Failed(why))) => Some(why),
        Ok(_) => Some("the connection closed".to_string()),
        Err(_) => Some(format!(
            "no answer from the broker within {} s",
            BROKER_TIMEOUT.as_secs()
        )),
    };
    if let Some(why) = failure {
        driver.abort();
        return Err(Error::ConnectionFailed(why));
    }
    Ok(OpenConnection {
        client,
        reports: Arc::new(Mutex::new(reports)),
        driver,
    })
}

/// Checks the message, publishes it and waits as its QoS asks (`publish` of 3.0.0 and 2.0.0).
async fn publish_checked(
    (client, reports): (AsyncClient, Arc<Mutex<mpsc::UnboundedReceiver<Report>>>),
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
) -> Result<(), Error> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Error::Other(format!(
            "the payload is {} bytes; moa publishes at most {MAX_PAYLOAD}",
            payload.len()
        )));
    }
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Err(Error::Other(format!(
            "`{topic}` is not a topic to publish to (empty, or with a wildcard)"
        )));
    }
    publish_and_wait(client, &reports, topic, payload, qos).await
}

impl<T: Send> spin_mqtt::HostConnectionWithStore<T> for OutboundMqtt {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
        username: String,
        password: String,
        keep_alive_interval_in_secs: u64,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, Error>> {
        let broker = match accessor.with(|mut access| access.get().check_open(&address)) {
            Ok(broker) => broker,
            Err(err) => return Ok(Err(err)),
        };
        let connection =
            match connect(broker, username, password, keep_alive_interval_in_secs).await {
                Ok(connection) => connection,
                Err(err) => return Ok(Err(err)),
            };
        Ok(accessor.with(|mut access| access.get().register(connection)))
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        self_: Resource<OpenConnection>,
        topic: String,
        payload: Vec<u8>,
        qos_level: Qos,
    ) -> wasmtime::Result<Result<(), Error>> {
        let publisher = accessor.with(|mut access| access.get().publisher(&self_))?;
        Ok(publish_checked(publisher, topic, payload, qos(qos_level)).await)
    }
}

/// Publishes, then reads the connection's reports until this message is as safe as `qos` asks.
async fn publish_and_wait(
    client: AsyncClient,
    reports: &Mutex<mpsc::UnboundedReceiver<Report>>,
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
) -> Result<(), Error> {
    // One publish per connection at a time: the next report is this message's.
    let mut reports = reports.lock().await;
    let failed = |why: String| Error::ConnectionFailed(why);
    if let Err(err) = client.publish(topic, qos, false, payload).await {
        return Err(failed(format!("the connection is closed: {err}")));
    }
    let wait = async {
        let pkid = loop {
            match reports.recv().await {
                Some(Report::Sent(pkid)) => break pkid,
                Some(Report::Failed(why)) => return Err(failed(why)),
                None => return Err(failed("the connection is closed".into())),
                Some(_) => continue,
            }
        };
        if qos == QoS::AtMostOnce {
            return Ok(());
        }
        loop {
            match reports.recv().await {
                Some(Report::Acked(acked)) if acked == pkid => return Ok(()),
                Some(Report::Failed(why)) => return Err(failed(why)),
                None => return Err(failed("the connection is closed".into())),
                Some(_) => continue,
            }
        }
    };
    match tokio::time::timeout(BROKER_TIMEOUT, wait).await {
        Ok(result) => result,
        Err(_) => Err(Error::Other(format!(
            "the broker did not acknowledge the message within {} s",
            BROKER_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_address;

    #[test]
    fn addresses_are_spins_mqtt_urls() {
        let (_, host, port, id) =
            parse_address("mqtt://broker.local:1884?client_id=orders-7").unwrap();
        assert_eq!(
            (host.as_str(), port, id.as_str()),
            ("broker.local", 1884, "orders-7")
        );
        let (_, _, port, id) = parse_address("mqtt://broker.local").unwrap();
        assert_eq!(port, 1883, "MQTT's default port");
        assert!(
            id.starts_with("moa-"),
            "a fresh client id when none is given: {id}"
        );
        for bad in [
            "http://broker:1883",
            "broker:1883",
            "mqtt://",
            "mqtts://broker:8883",
            "",
        ] {
            assert!(parse_address(bad).is_none(), "{bad}");
        }
    }
}
