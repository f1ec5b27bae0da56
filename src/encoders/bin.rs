//! The bin a rendition's video encoder branch lives in. It keeps the
//! branch's failures to itself: an error posted by any element inside
//! (the encoder, or a queue whose downstream failed) is not passed on to
//! the pipeline's bus, where it would end the whole channel, but marks the
//! bin failed and is told to its owner, which puts another encoder in its
//! place. From then on the bin takes and drops what its tee sends, so the
//! channel's other users never see the failure. It also notes when media
//! last went in and came out, for the owner's no-output watchdog.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use parking_lot::Mutex;

/// Told why the encoder branch failed (once, from a streaming thread:
/// must not block or change states).
pub type FailureHook = Box<dyn Fn(String) + Send + Sync>;

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct EncoderBin {
        pub(super) failed: AtomicBool,
        pub(super) on_failure: Mutex<Option<FailureHook>>,
        pub(super) activity: Arc<Activity>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for EncoderBin {
        const NAME: &'static str = "SluiceEncoderBin";
        type Type = super::EncoderBin;
        type ParentType = gst::Bin;
    }

    impl ObjectImpl for EncoderBin {}
    impl GstObjectImpl for EncoderBin {}
    impl ElementImpl for EncoderBin {}

    impl BinImpl for EncoderBin {
        fn handle_message(&self, msg: gst::Message) {
            if let gst::MessageView::Error(err) = msg.view() {
                let src = err.src().map(|s| s.name().to_string()).unwrap_or_default();
                self.fail(format!("{src}: {}", err.error()));
                return;
            }
            self.parent_handle_message(msg)
        }
    }

    impl EncoderBin {
        pub(super) fn fail(&self, why: String) {
            if self.failed.swap(true, Ordering::AcqRel) {
                return;
            }
            if let Some(hook) = self.on_failure.lock().take() {
                hook(why);
            }
        }
    }
}

glib::wrapper! {
    pub struct EncoderBin(ObjectSubclass<imp::EncoderBin>) @extends gst::Bin, gst::Element, gst::Object;
}

/// When media first and last entered the bin and last left it (ms since
/// its creation; 0 = never).
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    first_in: AtomicU64,
    last_in: AtomicU64,
    last_out: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            born: Instant::now(),
            first_in: AtomicU64::new(0),
            last_in: AtomicU64::new(0),
            last_out: AtomicU64::new(0),
        }
    }
}

/// Input older than this means the source paused, not the encoder.
const FRESH_INPUT_MS: u64 = 500;

impl Activity {
    fn now(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }

    fn input(&self) {
        let now = self.now();
        let _ = self
            .first_in
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_in.store(now, Ordering::Relaxed);
    }

    /// Ms the bin has been taking fresh input without giving any output
    /// (since its first input, or its last output). Zero while input is
    /// not flowing: a paused source is not the encoder's fault.
    pub fn silent_ms(&self) -> u64 {
        let now = self.now();
        let (first, last_in, last_out) = (
            self.first_in.load(Ordering::Relaxed),
            self.last_in.load(Ordering::Relaxed),
            self.last_out.load(Ordering::Relaxed),
        );
        if first == 0 || now.saturating_sub(last_in) > FRESH_INPUT_MS {
            return 0;
        }
        now.saturating_sub(last_out.max(first))
    }
}

impl EncoderBin {
    /// A bin around `elements` (linked among themselves, first to last),
    /// with ghost pads on the first's sink and the last's src. Its name is
    /// left to GStreamer, unique among a pipeline's several renditions.
    pub fn wrap(elements: &[gst::Element]) -> Result<EncoderBin, glib::BoolError> {
        let bin: EncoderBin = glib::Object::builder().build();
        bin.add_many(elements)?;
        gst::Element::link_many(elements)?;
        let first = elements.first().expect("an encoder branch has elements");
        let last = elements.last().expect("an encoder branch has elements");
        let sink = gst::GhostPad::with_target(&first.static_pad("sink").expect("sink pad"))?;
        let src = gst::GhostPad::with_target(&last.static_pad("src").expect("src pad"))?;
        bin.add_pad(&sink)?;
        bin.add_pad(&src)?;
        let imp = bin.imp();
        // After a failure, what the tee sends is dropped here, so the
        // failure does not travel upstream.
        let (weak, act) = (bin.downgrade(), imp.activity.clone());
        sink.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, _| match weak.upgrade() {
                Some(b) if b.failed() => gst::PadProbeReturn::Drop,
                _ => {
                    act.input();
                    gst::PadProbeReturn::Ok
                }
            },
        );
        let act = imp.activity.clone();
        src.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, _| {
                act.last_out.store(act.now(), Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            },
        );
        Ok(bin)
    }

    /// Sets what is told of the bin's failure (once).
    pub fn on_failure(&self, hook: FailureHook) {
        *self.imp().on_failure.lock() = Some(hook);
    }

    /// Marks the bin failed (for a reason found outside it, such as no
    /// output) and tells the hook, unless it already failed.
    pub fn fail(&self, why: String) {
        self.imp().fail(why);
    }

    pub fn failed(&self) -> bool {
        self.imp().failed.load(Ordering::Acquire)
    }

    pub fn activity(&self) -> Arc<Activity> {
        self.imp().activity.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn an_error_inside_stays_inside_and_is_told_once() {
        gst::init().unwrap();
        let a = gst::ElementFactory::make("identity").build().unwrap();
        let b = gst::ElementFactory::make("identity").build().unwrap();
        let bin = EncoderBin::wrap(&[a.clone(), b]).unwrap();
        let p = gst::Pipeline::new();
        p.add(&bin).unwrap();
        let told = Arc::new(AtomicUsize::new(0));
        let t = told.clone();
        bin.on_failure(Box::new(move |why| {
            assert!(why.contains("boom"), "{why}");
            t.fetch_add(1, Ordering::SeqCst);
        }));
        for _ in 0..2 {
            gst::element_error!(a, gst::LibraryError::Encode, ("boom"));
        }
        assert_eq!(told.load(Ordering::SeqCst), 1);
        assert!(bin.failed());
        let bus = p.bus().unwrap();
        assert!(bus.pop_filtered(&[gst::MessageType::Error]).is_none());
    }
}
