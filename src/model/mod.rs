//! The model every layer shares: names that can only hold safe values (`names`), and the
//! lifecycle of an instance as types (`lifecycle`: its state, the step of its build, the
//! parts made on its node) with the rules that follow from them, each in one place.

mod lifecycle;
mod names;

pub use lifecycle::{InstanceState, Made, Part, Step, may_act};
pub use names::*;
