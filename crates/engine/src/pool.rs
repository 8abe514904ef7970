//! The fast path: sandboxes built ahead of their requests.
//!
//! A [`SandboxPool`] keeps a few sandboxes of one shape (the engine's
//! default disk size, no extra read-only path, no network) built and
//! waiting: fresh namespaces, id maps, root filesystem and cgroup, init
//! blocked on its run request ([`Engine::prepare`]). A request of that
//! shape takes one, and pays only for what is its own: copying its
//! inputs, its limits, its run request, init's privilege drop, Landlock
//! and seccomp, and its program. Tearing the sandbox down (init's exit,
//! which takes the namespaces with it, the cgroup's removal) happens on
//! the pool's thread after the result is returned, while the next sandbox
//! is being built.
//!
//! Isolation is the same as [`Engine::run`]'s: every request gets a
//! sandbox no other request touched, used once and then destroyed. Other
//! shapes, and requests that find the pool empty, are served at once the
//! ordinary way.

use crate::sandbox::{Engine, PreparedSandbox, SandboxShape, StagedResult, Teardown};
use crate::spec::SandboxSpec;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often an idle builder looks whether the engine was stopped.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// How long the builder waits after a failed build before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

#[derive(Default)]
struct State {
    ready: VecDeque<PreparedSandbox>,
    /// Used sandboxes waiting to be taken down.
    used: VecDeque<Teardown>,
    stopping: bool,
    /// The last build error, while builds fail.
    failing: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sandboxes built ahead of their requests, and the thread that builds
/// them and takes used ones down.
pub struct SandboxPool {
    engine: Arc<Engine>,
    shape: SandboxShape,
    shared: Arc<Shared>,
    builder: Option<JoinHandle<()>>,
}

impl SandboxPool {
    /// A pool that keeps `size` sandboxes ready (at least 1), of the shape
    /// of a request with the engine's default limits.
    pub fn new(engine: Arc<Engine>, size: usize) -> std::io::Result<SandboxPool> {
        let shape = SandboxShape::plain(&engine.config().defaults);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let builder = {
            let (engine, shape, shared) = (Arc::clone(&engine), shape.clone(), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("formicary-pool".into())
                .spawn(move || build_loop(&engine, &shape, &shared, size.max(1)))?
        };
        Ok(SandboxPool {
            engine,
            shape,
            shared,
            builder: Some(builder),
        })
    }

    /// The shape the pool keeps ready.
    pub fn shape(&self) -> &SandboxShape {
        &self.shape
    }

    /// Sandboxes ready now.
    pub fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }

    /// Why the last build failed, while builds fail.
    pub fn failing(&self) -> Option<String> {
        self.shared.lock().failing.clone()
    }

    /// Runs `spec` as [`Engine::run_staged`] does, in a sandbox built ahead
    /// when one of its shape is ready.
    pub fn run_staged(&self, spec: &SandboxSpec) -> StagedResult {
        // A request of another shape, or one the engine will refuse, does
        // not use up a sandbox built ahead.
        if !self.shape.fits(spec) || self.engine.check(spec).is_err() {
            return self.engine.run_staged(spec);
        }
        // The builder is woken once the request is done, not now: building
        // a sandbox takes kernel locks (mounts, cgroups) that the request's
        // own setup needs too.
        let prepared = self.shared.lock().ready.pop_front();
        let Some(prepared) = prepared else {
            return self.engine.run_staged(spec);
        };
        let (staged, teardown) = self.engine.run_prepared_checked(prepared, spec);
        self.shared.lock().used.push_back(teardown);
        self.shared.wake.notify_all();
        staged
    }

    /// As [`Engine::run`]: the main program's result, or the failed stage's.
    pub fn run(&self, spec: &SandboxSpec) -> crate::result::RunResult {
        self.engine.finish_staged(spec, self.run_staged(spec))
    }
}

impl Drop for SandboxPool {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(builder) = self.builder.take() {
            let _ = builder.join();
        }
    }
}

/// The builder: takes used sandboxes down first (they hold host ids and
/// cgroups), then tops the pool up; sleeps when there is nothing to do.
fn build_loop(engine: &Engine, shape: &SandboxShape, shared: &Shared, size: usize) {
    loop {
        let mut state = shared.lock();
        while !state.stopping
            && !engine.is_stopping()
            && state.used.is_empty()
            && state.ready.len() >= size
        {
            // Woken by requests; and every so often, to notice
            // `Engine::stop_all`, which no request may follow.
            state = shared
                .wake
                .wait_timeout(state, STOP_CHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if engine.is_stopping() && !state.stopping {
            // The engine was stopped (its inits killed) while the pool
            // lives on: take every sandbox down, build none, and go on
            // taking down the ones requests still hand back.
            take_all_down(state);
            let state = shared.lock();
            if state.used.is_empty() && !state.stopping {
                drop(shared.wake.wait_timeout(state, STOP_CHECK));
            }
            continue;
        }
        if state.stopping {
            take_all_down(state);
            return;
        }
        if let Some(teardown) = state.used.pop_front() {
            drop(state);
            teardown.finish(StagedResult::empty());
            continue;
        }
        drop(state);
        match engine.prepare(shape) {
            Ok(prepared) => {
                let mut state = shared.lock();
                state.failing = None;
                state.ready.push_back(prepared);
            }
            Err(message) => {
                shared.lock().failing = Some(message);
                std::thread::sleep(RETRY_AFTER);
            }
        }
    }
}

/// Takes down every sandbox the pool holds, ready or used, outside the
/// lock. (A ready sandbox's init is killed with its guard.)
fn take_all_down(mut state: MutexGuard<'_, State>) {
    let ready: Vec<PreparedSandbox> = state.ready.drain(..).collect();
    let used: Vec<Teardown> = state.used.drain(..).collect();
    drop(state);
    drop(ready);
    for teardown in used {
        teardown.finish(StagedResult::empty());
    }
}
