//! A branch of a channel's pipeline: elements hung off one or more tees
//! while the pipeline runs, and taken off again without stopping it; and
//! the small element makers every chain uses.

use gst::prelude::*;

use super::MediaError;

/// Elements hung off one or more tees of a running pipeline.
pub struct Branch {
    links: Vec<(gst::Element, gst::Pad)>,
    elements: Vec<gst::Element>,
}

impl Branch {
    /// A branch with nothing in it (a placeholder while one is replaced).
    pub fn empty() -> Branch {
        Branch {
            links: Vec::new(),
            elements: Vec::new(),
        }
    }

    /// Brings `elements` (already in `p` and linked among themselves) to the
    /// pipeline's state, then links a new src pad of `tee` to `head`'s sink.
    pub fn attach(
        p: &gst::Pipeline,
        tee: &gst::Element,
        elements: Vec<gst::Element>,
        head: &gst::Element,
    ) -> Result<Branch, MediaError> {
        let mut branch = Branch {
            links: Vec::new(),
            elements,
        };
        let started = branch
            .elements
            .iter()
            .rev()
            .try_for_each(|e| e.sync_state_with_parent().map_err(MediaError::from))
            .and_then(|()| branch.link(tee, head));
        match started {
            Ok(()) => Ok(branch),
            Err(e) => {
                branch.remove(p);
                Err(e)
            }
        }
    }

    /// Links one more tee into this branch's `head`.
    pub fn link(&mut self, tee: &gst::Element, head: &gst::Element) -> Result<(), MediaError> {
        let src = tee
            .request_pad_simple("src_%u")
            .ok_or_else(|| MediaError::SourceFailed("tee refused a new output".into()))?;
        let sink = head.static_pad("sink").expect("branch head sink pad");
        let linked = src.link(&sink);
        self.links.push((tee.clone(), src));
        linked
            .map(drop)
            .map_err(|e| MediaError::SourceFailed(format!("cannot link a branch: {e:?}")))
    }

    /// Elements that hang off no tee (the tee a rendition's outputs read
    /// from, which outlives the encoder branches feeding it), brought to
    /// the pipeline's state.
    pub fn standalone(
        p: &gst::Pipeline,
        elements: Vec<gst::Element>,
    ) -> Result<Branch, MediaError> {
        let branch = Branch {
            links: Vec::new(),
            elements,
        };
        let started = branch.elements.iter().rev().try_for_each(|e| {
            e.sync_state_with_parent()
                .map(drop)
                .map_err(MediaError::from)
        });
        match started {
            Ok(()) => Ok(branch),
            Err(e) => {
                branch.remove(p);
                Err(e)
            }
        }
    }

    /// The branch's elements, in the order they were built.
    pub fn elements(&self) -> &[gst::Element] {
        &self.elements
    }

    /// Unlinks the branch from its tees and takes its elements to NULL and
    /// out of the pipeline. Must run off the async runtime.
    pub fn remove(self, p: &gst::Pipeline) {
        for (tee, pad) in self.links {
            tee.release_request_pad(&pad);
        }
        for e in &self.elements {
            if e.set_state(gst::State::Null).is_err() {
                tracing::warn!(element = %e.name(), "a branch element did not reach NULL cleanly");
            }
        }
        for e in &self.elements {
            let _ = p.remove(e);
        }
    }
}

/// A rendition's encoded elementary stream: the branch that makes it and
/// the tee its container outputs read from.
pub struct Encoded {
    pub branch: Branch,
    pub out: gst::Element,
    /// The video encoder, asked for keyframes when a viewer joins live.
    pub encoder: Option<gst::glib::WeakRef<gst::Element>>,
    /// What outlives a replaced encoder branch (the `out` tee), when the
    /// encoder can be replaced.
    pub tail: Option<Branch>,
    /// The bin holding the encoder branch, when it can be replaced.
    pub bin: Option<crate::encoders::bin::EncoderBin>,
    /// The encoder candidate in use (transcoded video).
    pub candidate: Option<crate::encoders::Candidate>,
    /// Where its pictures live on the way to the encoder (transcoded video).
    pub memory: Option<crate::encoders::memory::MemoryPath>,
}

impl Encoded {
    /// Takes the branch, then what outlives it, off the pipeline (off the
    /// async runtime).
    pub fn remove(self, p: &gst::Pipeline) {
        self.branch.remove(p);
        if let Some(t) = self.tail {
            t.remove(p);
        }
    }

    /// Every element, for leak checks.
    pub fn elements(&self) -> impl Iterator<Item = &gst::Element> {
        self.branch
            .elements()
            .iter()
            .chain(self.tail.iter().flat_map(|t| t.elements().iter()))
    }
}

pub fn make(factory: &str) -> Result<gst::Element, MediaError> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        MediaError::SourceFailed(format!("GStreamer element '{factory}' is not installed"))
    })
}

pub fn queue(max_time_ns: u64, leaky: bool) -> Result<gst::Element, MediaError> {
    let q = make("queue")?;
    q.set_property("max-size-buffers", 0u32);
    q.set_property("max-size-bytes", 0u32);
    q.set_property("max-size-time", max_time_ns);
    if leaky {
        q.set_property_from_str("leaky", "downstream");
    }
    Ok(q)
}

/// A tee that drops what no branch takes (a channel's tees exist before
/// and between their branches).
pub fn tee() -> Result<gst::Element, MediaError> {
    let t = make("tee")?;
    t.set_property("allow-not-linked", true);
    Ok(t)
}

pub(super) fn capsfilter(caps: gst::Caps) -> Result<gst::Element, MediaError> {
    let f = make("capsfilter")?;
    f.set_property("caps", caps);
    Ok(f)
}
