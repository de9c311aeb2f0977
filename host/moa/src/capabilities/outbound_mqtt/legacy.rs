//! Spin 2's `fermyon:spin/mqtt@2.0.0` (spin-sdk 3 to 5) over the same checks, connections and
//! acknowledgements as 3.0.0; its calls are synchronous for the component.

use super::bindings::spin::mqtt::mqtt as v3;
use super::{OpenConnection, OutboundMqtt, OutboundMqttView};
use wasmtime::component::{Linker, Resource};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "moa:host/outbound-mqtt-v2",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/mqtt@2.0.0.connection": crate::capabilities::outbound_mqtt::OpenConnection,
        },
    });
}

use bindings::fermyon::spin::mqtt as v2;

/// Adds `fermyon:spin/mqtt@2.0.0` to the linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> OutboundMqttView<'_>,
) -> wasmtime::Result<()> {
    v2::add_to_linker::<T, OutboundMqtt>(linker, view)
}

fn v2_error(err: v3::Error) -> v2::Error {
    match err {
        v3::Error::InvalidAddress => v2::Error::InvalidAddress,
        v3::Error::TooManyConnections => v2::Error::TooManyConnections,
        v3::Error::ConnectionFailed(why) => v2::Error::ConnectionFailed(why),
        v3::Error::Other(why) => v2::Error::Other(why),
    }
}

fn qos(qos: v2::Qos) -> rumqttc::QoS {
    match qos {
        v2::Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
        v2::Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        v2::Qos::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

impl v2::Host for OutboundMqttView<'_> {}

impl v2::HostConnection for OutboundMqttView<'_> {
    async fn open(
        &mut self,
        address: String,
        username: String,
        password: String,
        keep_alive_interval_in_secs: u64,
    ) -> wasmtime::Result<Result<Resource<OpenConnection>, v2::Error>> {
        let broker = match self.check_open(&address) {
            Ok(broker) => broker,
            Err(err) => return Ok(Err(v2_error(err))),
        };
        Ok(
            match super::connect(broker, username, password, keep_alive_interval_in_secs).await {
                Ok(connection) => self.register(connection).map_err(v2_error),
                Err(err) => Err(v2_error(err)),
            },
        )
    }

    async fn publish(
        &mut self,
        handle: Resource<OpenConnection>,
        topic: String,
        payload: Vec<u8>,
        qos_level: v2::Qos,
    ) -> wasmtime::Result<Result<(), v2::Error>> {
        let publisher = self.publisher(&handle)?;
        Ok(
            super::publish_checked(publisher, topic, payload, qos(qos_level))
                .await
                .map_err(v2_error),
        )
    }

    async fn drop(&mut self, handle: Resource<OpenConnection>) -> wasmtime::Result<()> {
        // As 3.0.0's `drop`: tell the broker, stop the event loop.
        <Self as v3::HostConnection>::drop(self, handle)
    }
}
