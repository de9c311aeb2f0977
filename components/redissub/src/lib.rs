//! Test component: Spin's inbound Redis handler as spin-sdk 7 builds it. Each message is counted in
//! the `default` key-value store under `seen:<message>`; `trap` panics and `fail` returns an error.

use bytes::Bytes;
use spin_sdk::key_value::Store;
use spin_sdk::redis_subscriber;

#[redis_subscriber]
async fn on_message(message: Bytes) -> anyhow::Result<()> {
    let text = String::from_utf8_lossy(&message).into_owned();
    match text.as_str() {
        "trap" => panic!("redissub was asked to trap"),
        "fail" => anyhow::bail!("redissub was asked to fail"),
        _ => {}
    }
    let store = Store::open_default().await?;
    let key = format!("seen:{text}");
    let count = match store.get(&key).await? {
        Some(bytes) => String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0),
        None => 0,
    };
    store.set(&key, (count + 1).to_string().as_bytes()).await?;
    Ok(())
}
