//! Test component: a library component exporting `moa-test:greet/{greeter,shouter,counter}`, which
//! apps compose into `greet-http` through `[component.<id>.dependencies]`.

wit_bindgen::generate!({
    path: "../../wit/guest/greet",
    world: "moa-test:greet/provider",
});

use exports::moa_test::greet::{counter, greeter, shouter};
use std::cell::RefCell;

/// The environment the provider sees: the depender's when it inherits `environment`, else none.
fn greeting() -> String {
    std::env::var("GREETING").unwrap_or_else(|_| "hello".to_string())
}

struct Provider;

struct Tally(RefCell<Vec<String>>);

impl greeter::GuestTally for Tally {
    fn new() -> Self {
        Tally(RefCell::new(Vec::new()))
    }
    fn add(&self, name: String) {
        self.0.borrow_mut().push(name);
    }
    fn names(&self) -> Vec<String> {
        self.0.borrow().clone()
    }
}

struct LoudTally(RefCell<Vec<String>>);

impl shouter::GuestTally for LoudTally {
    fn new() -> Self {
        LoudTally(RefCell::new(Vec::new()))
    }
    fn add(&self, name: String) {
        self.0.borrow_mut().push(name.to_uppercase());
    }
    fn names(&self) -> Vec<String> {
        self.0.borrow().clone()
    }
}

impl greeter::Guest for Provider {
    type Tally = Tally;
    fn greet(name: String) -> String {
        format!("{}, {name}!", greeting())
    }
}

impl shouter::Guest for Provider {
    type Tally = LoudTally;
    fn greet(name: String) -> String {
        format!("{}, {name}!", greeting()).to_uppercase()
    }
}

impl counter::Guest for Provider {
    fn greet(times: u32) -> u32 {
        times
    }
}

export!(Provider);
