//! The agent-audio lane: the rest of one item's audio goes to Twilio without the core.
//!
//! Every `response.output_audio.delta` the core forwards costs the threaded shell a hand-off
//! from the model reader thread to the session thread (a wake-up per delta). Once the core has
//! forwarded a delta and nothing stands between the next delta of the same item and the caller
//! (the session is confirmed µ-law, the response is not cut, the stream is known, nobody asked
//! for audio events), it grants an [`AudioLane`] ([`crate::call::Output::AudioLane`]): the
//! shell may then write that item's following deltas to Twilio itself, each as a `media` frame
//! and the chunk mark [`AudioLane::chunk`] names, and tell the core afterwards with
//! [`crate::call::Input::AudioLaneSent`] (in order, before any other input), which keeps the
//! playback ledger exactly as if the core had sent them.
//!
//! A grant holds only until the core's next input of any other kind: whatever the core
//! handles next (a barge-in, a `clear`, a new item, a timer, a command) may change what the
//! next delta deserves, so the shell must stop using the lane before it feeds the core anything
//! else, and send the next delta the ordinary way (which may grant the lane again).
//!
//! ```
//! use twilio_realtime::call::audio_lane::AudioLane;
//!
//! let mut lane = AudioLane::new("MZ1", "resp_1", "item_1", 0, 3, 160);
//! assert!(lane.matches("resp_1", "item_1", 0));
//! assert!(!lane.matches("resp_1", "item_2", 0));
//! // The chunk mark names what has been sent of the item when the chunk has played.
//! assert_eq!(lane.chunk(160), "3:0:320:item_1");
//! assert_eq!(lane.chunk(80), "3:0:400:item_1");
//! ```

use crate::call::playback::MarkName;

/// Permission to forward one item's next audio deltas straight to Twilio (see the module
/// docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioLane {
    stream_sid: String,
    response_id: String,
    item_id: String,
    content_index: u32,
    generation: u64,
    sent: u64,
}

impl AudioLane {
    /// A lane for `item_id`'s content part `content_index` of `response_id` on the stream
    /// `stream_sid`, in playback-ledger generation `generation`, of which `sent` bytes went out
    /// already.
    pub fn new(
        stream_sid: impl Into<String>,
        response_id: impl Into<String>,
        item_id: impl Into<String>,
        content_index: u32,
        generation: u64,
        sent: u64,
    ) -> AudioLane {
        AudioLane {
            stream_sid: stream_sid.into(),
            response_id: response_id.into(),
            item_id: item_id.into(),
            content_index,
            generation,
            sent,
        }
    }

    /// The Twilio stream the audio goes to.
    pub fn stream_sid(&self) -> &str {
        &self.stream_sid
    }

    /// The response the lane's audio belongs to.
    pub fn response_id(&self) -> &str {
        &self.response_id
    }

    /// The item the lane's audio belongs to.
    pub fn item_id(&self) -> &str {
        &self.item_id
    }

    /// The content part inside the item.
    pub fn content_index(&self) -> u32 {
        self.content_index
    }

    /// Whether a delta of (`response_id`, `item_id`, `content_index`) may take the lane.
    pub fn matches(&self, response_id: &str, item_id: &str, content_index: u32) -> bool {
        self.content_index == content_index
            && self.item_id == item_id
            && self.response_id == response_id
    }

    /// Counts a chunk of `bytes` of µ-law as sent and returns the name of the mark to send
    /// right after it: the one the core's playback ledger gives the same chunk.
    pub fn chunk(&mut self, bytes: u64) -> String {
        self.sent = self.sent.saturating_add(bytes);
        MarkName::Chunk {
            generation: self.generation,
            content_index: self.content_index,
            offset: self.sent,
            item_id: &self.item_id,
        }
        .format()
    }
}
