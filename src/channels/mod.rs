//! Shared channels: a rendition's output cut into chunks and fanned out to its viewers.

pub mod container;
pub mod fanout;
