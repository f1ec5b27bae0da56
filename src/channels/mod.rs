//! Shared channels: one rendition's output handed to any number of viewers.

pub mod fanout;
