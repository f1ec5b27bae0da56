//! Shared channels: one rendition's muxer output cut into chunks that any
//! number of viewers can join at a keyframe.

pub mod container;
