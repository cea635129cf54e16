//! An in-process source for deterministic tests of the layers above (policy, fetcher, API): files held in
//! memory, every request scripted (latency, errors, truncated, shifted or foreign answers, hangs), and a call
//! log with ranges and times. Latency is `tokio::time::sleep`, so on a paused clock (`start_paused`) a test of
//! hedging or deadlines runs in microseconds and every time it observes is exact. Listings come in pages of a
//! set size and can be made to fail at a chosen page (a refresh that breaks off half-way).
//!
//! Answers pass through the same [`verify_range`] as B2's, so a scripted bad answer exercises the real check.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::verify::{Answer, verify_range};
use super::{ObjectInfo, ObjectSource, SourceHealth, UpstreamError};
use crate::sync::Mutex;

/// What one request does.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// Time before the answer.
    pub latency: Duration,
    pub fault: Option<Fault>,
}

impl Step {
    pub fn after(latency: Duration) -> Self {
        Self {
            latency,
            fault: None,
        }
    }

    pub fn fail(latency: Duration, e: UpstreamError) -> Self {
        Self {
            latency,
            fault: Some(Fault::Error(e)),
        }
    }

    pub fn with(latency: Duration, fault: Fault) -> Self {
        Self {
            latency,
            fault: Some(fault),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// The request fails with this error.
    Error(UpstreamError),
    /// The body is this many bytes short.
    Truncated(u64),
    /// The bytes of the range shifted by this many, with an honest `Content-Range` for what was sent.
    Shifted(u64),
    /// The answer claims another file version (a re-upload between listing and reading).
    Foreign,
    /// Never answers (until dropped).
    Hang,
}

/// How a logged call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEnd {
    /// Still running.
    Running,
    Ok,
    Failed(String),
    /// Dropped before it answered (a hedge's loser, a timeout, a deadline).
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Call {
    /// 0-based arrival order.
    pub seq: usize,
    pub file: String,
    pub range: Range<u64>,
    pub started: Instant,
    pub ended: Option<Instant>,
    pub end: CallEnd,
}

type Script = Box<dyn Fn(&Call) -> Step + Send + Sync>;

#[derive(Default)]
struct State {
    files: HashMap<String, (ObjectInfo, Bytes)>,
    queue: VecDeque<Step>,
    calls: Vec<Call>,
    /// Files per listing page (0: the whole list is one page).
    list_page: usize,
    /// The next listing fails with this error when it reaches this page (0-based), after handing over the
    /// pages before it.
    list_fault: Option<(usize, UpstreamError)>,
    /// Pages handed over by listings so far (a failed page is not counted).
    list_pages: usize,
}

#[derive(Default)]
pub struct MockSource {
    state: Mutex<State>,
    /// Decides the step of a call when the queue is empty (default: answer at once).
    script: Mutex<Option<Script>>,
}

/// Marks its call cancelled if the read future is dropped before it answered.
struct CallGuard<'a> {
    source: &'a MockSource,
    seq: usize,
    done: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.source.end(self.seq, CallEnd::Cancelled);
        }
    }
}

impl MockSource {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds (or replaces, as a new version) a file; returns what the catalog would list.
    pub fn add_file(&self, name: &str, data: impl Into<Bytes>) -> ObjectInfo {
        let data = data.into();
        let mut st = self.state.lock();
        let version = st.files.len() + st.calls.len();
        let info = ObjectInfo {
            name: name.to_string(),
            id: format!("mock_{name}_{version}").into(),
            size: data.len() as u64,
            modified_ms: 0,
        };
        st.files.insert(name.to_string(), (info.clone(), data));
        info
    }

    /// Removes a file (as if deleted upstream); returns whether it was there.
    pub fn remove_file(&self, name: &str) -> bool {
        self.state.lock().files.remove(name).is_some()
    }

    /// Listings hand over `files` files a page (0: the whole list in one page).
    pub fn set_list_page(&self, files: usize) {
        self.state.lock().list_page = files;
    }

    /// The next listing fails with `e` at page `page` (0-based), after the pages before it were handed over
    /// (a listing with fewer pages succeeds, and the fault is gone).
    pub fn fail_listing_at_page(&self, page: usize, e: UpstreamError) {
        self.state.lock().list_fault = Some((page, e));
    }

    /// Listing pages handed over so far.
    pub fn list_pages(&self) -> usize {
        self.state.lock().list_pages
    }

    /// Queues steps for the next requests, in arrival order.
    pub fn push(&self, steps: impl IntoIterator<Item = Step>) {
        self.state.lock().queue.extend(steps);
    }

    /// Decides the step of every request the queue does not cover.
    pub fn script(&self, f: impl Fn(&Call) -> Step + Send + Sync + 'static) {
        *self.script.lock() = Some(Box::new(f));
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().calls.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().calls.len()
    }

    /// Requests whose end matches.
    pub fn count_ended(&self, end: &CallEnd) -> usize {
        self.state
            .lock()
            .calls
            .iter()
            .filter(|c| &c.end == end)
            .count()
    }

    fn end(&self, seq: usize, end: CallEnd) {
        if let Some(c) = self.state.lock().calls.get_mut(seq) {
            c.ended = Some(Instant::now());
            c.end = end;
        }
    }

    async fn answer(&self, obj: &ObjectInfo, range: Range<u64>) -> Result<Bytes, UpstreamError> {
        let (seq, step) = {
            let mut st = self.state.lock();
            let seq = st.calls.len();
            let call = Call {
                seq,
                file: obj.name.clone(),
                range: range.clone(),
                started: Instant::now(),
                ended: None,
                end: CallEnd::Running,
            };
            let step = match st.queue.pop_front() {
                Some(s) => s,
                None => match &*self.script.lock() {
                    Some(f) => f(&call),
                    None => Step::default(),
                },
            };
            st.calls.push(call);
            (seq, step)
        };
        let mut guard = CallGuard {
            source: self,
            seq,
            done: false,
        };
        tokio::time::sleep(step.latency).await;
        let result = self.respond(obj, &range, step.fault).await;
        guard.done = true;
        self.end(
            seq,
            match &result {
                Ok(_) => CallEnd::Ok,
                Err(e) => CallEnd::Failed(e.reason().to_string()),
            },
        );
        result
    }

    async fn respond(
        &self,
        obj: &ObjectInfo,
        range: &Range<u64>,
        fault: Option<Fault>,
    ) -> Result<Bytes, UpstreamError> {
        let stored = self.state.lock().files.get(&obj.name).cloned();
        let Some((current, data)) = stored else {
            return Err(UpstreamError::NotFound(obj.name.clone()));
        };
        let (mut start, mut end) = (range.start, range.end.min(current.size));
        // The range the answer's header claims: what was sent, except for a body that broke off.
        let mut claimed_end = end;
        let mut id = current.id.clone();
        match fault {
            None => {}
            Some(Fault::Error(e)) => return Err(e),
            Some(Fault::Hang) => std::future::pending::<()>().await,
            Some(Fault::Truncated(n)) => end = end.saturating_sub(n).max(start),
            Some(Fault::Shifted(n)) => {
                start = (start + n).min(current.size.saturating_sub(1));
                end = (end + n).min(current.size);
                claimed_end = end;
            }
            Some(Fault::Foreign) => id = format!("{id}_other").into(),
        }
        if start >= end {
            return Err(UpstreamError::Changed(format!(
                "{}: range {}-{} not satisfiable",
                obj.name, range.start, range.end
            )));
        }
        let body = data.slice(start as usize..end as usize);
        let content_range = format!("bytes {}-{}/{}", start, claimed_end - 1, current.size);
        verify_range(
            obj,
            range,
            Answer {
                content_range: Some(&content_range),
                file_id: Some(&id),
                body_len: body.len() as u64,
            },
        )?;
        Ok(body)
    }
}

impl ObjectSource for MockSource {
    fn list_into<'a>(
        &'a self,
        each: &'a mut (dyn FnMut(ObjectInfo) + Send),
    ) -> BoxFuture<'a, Result<usize, UpstreamError>> {
        async move {
            let (mut files, page, fault) = {
                let mut st = self.state.lock();
                let files: Vec<ObjectInfo> = st.files.values().map(|(i, _)| i.clone()).collect();
                (files, st.list_page, st.list_fault.take())
            };
            files.sort_by(|a, b| a.name.cmp(&b.name));
            let page = if page == 0 { files.len().max(1) } else { page };
            // An empty list is one empty page, as a store answers it.
            let pages: Vec<&[ObjectInfo]> = if files.is_empty() {
                vec![&files[..]]
            } else {
                files.chunks(page).collect()
            };
            let mut n = 0;
            for (i, chunk) in pages.into_iter().enumerate() {
                if let Some((at, e)) = &fault
                    && *at == i
                {
                    return Err(e.clone());
                }
                for o in chunk {
                    each(o.clone());
                    n += 1;
                }
                self.state.lock().list_pages += 1;
                // A page is an await point, as a store's answer is: a test can run reads between pages.
                tokio::task::yield_now().await;
            }
            Ok(n)
        }
        .boxed()
    }

    fn read(
        &self,
        obj: &ObjectInfo,
        range: Range<u64>,
    ) -> BoxFuture<'_, Result<Bytes, UpstreamError>> {
        let obj = obj.clone();
        async move { self.answer(&obj, range).await }.boxed()
    }

    fn health(&self) -> SourceHealth {
        SourceHealth {
            authorized: true,
            last_error: None,
        }
    }

    fn describe(&self) -> String {
        "mock source".into()
    }
}
