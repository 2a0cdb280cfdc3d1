//! Workflows in the node: the WorkflowSupervisor and one RunActor per run.
//!
//! A run's steps call plugins through [`NodeExecutor`], the same path as
//! `plexus exec` (breakers, retries, idempotency keys). Sagas keep a durable
//! journal in `data_dir/workflows/<id>.saga.jsonl`, written before each
//! effect. A saga whose actor fails is resumed from its journal. So is every
//! unfinished saga found when the node starts, which makes a saga survive
//! `kill -9`: it completes, or compensates every completed step in reverse
//! order. Each step keeps its idempotency key, so a re-sent step has one
//! effect (see `effects.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use plexus_workflow::{
    list_journals, run_observed, Observer, RunReport, RunStatus, SagaRun, StepError, StepExecutor,
    Workflow, WorkflowKind,
};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use serde_json::Value;

use crate::ctx::{actor_name, NodeCtx};
use crate::services::exec::{self, CallSpec};
use plexus_exec::{RawJson, Target};

/// Runs workflow steps on the cluster.
#[derive(Clone)]
pub struct NodeExecutor {
    pub ctx: Arc<NodeCtx>,
}

impl StepExecutor for NodeExecutor {
    fn exec(
        &self,
        plugin: &str,
        command: &str,
        input: Value,
        idempotency_key: String,
    ) -> BoxFuture<'_, Result<Value, StepError>> {
        let spec = CallSpec {
            idempotency_key: Some(idempotency_key),
            ..CallSpec::new(
                Target::new(plugin, command),
                Some(RawJson::from_value(&input)),
            )
        };
        Box::pin(async move {
            let call = exec::call(&self.ctx, spec)
                .map_err(|e| StepError::permanent(e.to_string()).not_delivered())?;
            match exec::run(&self.ctx, &call).await {
                // The step's output feeds the next steps' templates: parsed here.
                Ok(s) => Ok(serde_json::from_str(s.output.output.as_str()).unwrap_or(Value::Null)),
                // Timed out or its node lost mid-request: may have run.
                Err(f) if f.in_doubt => Err(StepError::in_doubt(f.detail())),
                Err(f) => {
                    // Unavailable, breaker open, failed: may pass.
                    let e = if f.error.may_pass_elsewhere() {
                        StepError::transient(f.detail())
                    } else {
                        StepError::permanent(f.detail())
                    };
                    Err(if f.answered { e } else { e.not_delivered() })
                }
            }
        })
    }
}

/// What a RunActor runs.
pub enum Job {
    Fresh {
        id: String,
        workflow: Box<Workflow>,
        input: Value,
    },
    ResumeSaga {
        path: PathBuf,
    },
}

#[derive(RactorMessage)]
pub enum WorkflowsMsg {
    /// Start a run; answers its id.
    Start {
        workflow: Box<Workflow>,
        input: Value,
        reply: RpcReplyPort<String>,
    },
    /// A run's report changed.
    Update(Box<RunReport>),
    /// A run ended; the actor stops once this is acknowledged (so the end
    /// is recorded before the supervisor sees the actor terminate).
    Finished(Box<RunReport>, RpcReplyPort<()>),
    /// Resume the unfinished sagas once the cluster view has settled.
    ResumeAll {
        attempt: u32,
    },
    /// Re-drive saga `id` if it is still stuck (a step in doubt or a
    /// compensation that could not be delivered).
    RetryStuck {
        id: String,
    },
    /// A peer came up: what a stuck saga waited for may be back.
    PeerUp,
    List(RpcReplyPort<Vec<RunReport>>),
    /// Answer when run `id` has ended (at once if it has).
    Wait {
        id: String,
        reply: RpcReplyPort<Option<RunReport>>,
    },
}

pub struct WorkflowsState {
    ctx: Arc<NodeCtx>,
    dir: PathBuf,
    runs: HashMap<String, RunReport>,
    actors: HashMap<String, (ActorCell, bool)>,
    waiters: HashMap<String, Vec<RpcReplyPort<Option<RunReport>>>>,
    resumes: HashMap<String, u32>,
    pending_resume: Vec<(String, PathBuf)>,
    /// Times each stuck saga has been re-driven since it last made progress.
    stuck_retries: HashMap<String, u32>,
}

/// First wait before a stuck saga is re-driven; doubles up to
/// [`STUCK_RETRY_MAX`]. A peer coming up re-drives it sooner.
pub const STUCK_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two re-drives of a stuck saga.
pub const STUCK_RETRY_MAX: Duration = Duration::from_secs(30);

fn stuck_retry_delay(n: u32) -> Duration {
    STUCK_RETRY_FIRST
        .saturating_mul(1u32 << n.min(16))
        .min(STUCK_RETRY_MAX)
}

pub struct WorkflowSupervisor;

fn ended(s: RunStatus) -> bool {
    !matches!(s, RunStatus::Running | RunStatus::Compensating)
}

impl Actor for WorkflowSupervisor {
    type Msg = WorkflowsMsg;
    type State = WorkflowsState;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<WorkflowsState, ActorProcessingErr> {
        let dir = ctx.config.data_dir.join("workflows");
        let mut st = WorkflowsState {
            ctx,
            dir,
            runs: HashMap::new(),
            actors: HashMap::new(),
            waiters: HashMap::new(),
            resumes: HashMap::new(),
            pending_resume: vec![],
            stuck_retries: HashMap::new(),
        };
        // Sagas left unfinished by a crash continue now.
        match list_journals(&st.dir) {
            Ok(journals) => {
                for j in journals {
                    match (&j.report, &j.error) {
                        (Some(r), _) if j.needs_resume() => {
                            tracing::warn!(saga = %r.id, status = ?r.status, "found an unfinished saga");
                            st.runs.insert(r.id.clone(), r.clone());
                            st.pending_resume.push((r.id.clone(), j.path.clone()));
                        }
                        (Some(r), _) => {
                            st.runs.insert(r.id.clone(), r.clone());
                        }
                        (None, e) => {
                            tracing::error!(journal = %j.path.display(), error = ?e, "unreadable saga journal left alone")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(dir = %st.dir.display(), error = %e, "cannot list saga journals")
            }
        }
        if !st.pending_resume.is_empty() {
            myself.cast(WorkflowsMsg::ResumeAll { attempt: 0 })?;
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: WorkflowsMsg,
        st: &mut WorkflowsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkflowsMsg::Start {
                workflow,
                input,
                reply,
            } => {
                let id = format!("wf-{}", uuid::Uuid::now_v7().simple());
                st.runs.insert(id.clone(), RunReport::new(&id, &workflow));
                spawn_run(
                    &myself,
                    st,
                    id.clone(),
                    Job::Fresh {
                        id: id.clone(),
                        workflow,
                        input,
                    },
                )
                .await;
                let _ = reply.send(id);
            }
            WorkflowsMsg::Update(r) => {
                st.runs.insert(r.id.clone(), *r);
            }
            WorkflowsMsg::ResumeAll { attempt } => {
                // A just-restarted node knows no plugin hosts yet: resuming
                // now would fail steps that merely wait for the registry
                // ("no node hosts it"). Wait until every peer it sees up
                // has announced what it hosts (at least one peer).
                if !st.ctx.directory.load().peers_announced(st.ctx.name()) && attempt < 50 {
                    myself.send_after(Duration::from_millis(200), move || {
                        WorkflowsMsg::ResumeAll {
                            attempt: attempt + 1,
                        }
                    });
                    return Ok(());
                }
                for (id, path) in std::mem::take(&mut st.pending_resume) {
                    tracing::warn!(saga = %id, "resuming the saga from its journal");
                    spawn_run(&myself, st, id, Job::ResumeSaga { path }).await;
                }
            }
            WorkflowsMsg::Finished(r, ack) => {
                if let Some((_, done)) = st.actors.get_mut(&r.id) {
                    *done = true;
                }
                let _ = ack.send(());
                for w in st.waiters.remove(&r.id).unwrap_or_default() {
                    let _ = w.send(Some((*r).clone()));
                }
                if r.kind == WorkflowKind::Saga && r.status == RunStatus::Stuck {
                    // What it waits for (a node that is down, a plugin that
                    // is not announced yet) may come back: try again later.
                    let n = st.stuck_retries.entry(r.id.clone()).or_default();
                    let delay = stuck_retry_delay(*n);
                    *n += 1;
                    tracing::warn!(saga = %r.id, retry_in_ms = delay.as_millis() as u64, "saga stuck; it will be re-driven");
                    let id = r.id.clone();
                    myself.send_after(delay, move || WorkflowsMsg::RetryStuck { id });
                } else {
                    st.stuck_retries.remove(&r.id);
                }
                st.runs.insert(r.id.clone(), *r);
            }
            WorkflowsMsg::RetryStuck { id } => {
                let stuck = st.runs.get(&id).map(|r| r.status) == Some(RunStatus::Stuck);
                let path = plexus_workflow::journal_path(&st.dir, &id);
                if stuck && !st.actors.contains_key(&id) && path.exists() {
                    tracing::info!(saga = %id, "re-driving a stuck saga");
                    spawn_run(&myself, st, id, Job::ResumeSaga { path }).await;
                }
            }
            WorkflowsMsg::PeerUp => {
                // Give the newcomer's announce a moment to reach the
                // registry, then re-drive every stuck saga at once.
                for (id, r) in &st.runs {
                    if r.status == RunStatus::Stuck {
                        st.stuck_retries.insert(id.clone(), 0);
                        let id = id.clone();
                        myself.send_after(Duration::from_millis(500), move || {
                            WorkflowsMsg::RetryStuck { id }
                        });
                    }
                }
            }
            WorkflowsMsg::List(reply) => {
                let mut all: Vec<RunReport> = st.runs.values().cloned().collect();
                all.sort_by(|a, b| a.id.cmp(&b.id));
                let _ = reply.send(all);
            }
            WorkflowsMsg::Wait { id, reply } => match st.runs.get(&id) {
                None => {
                    let _ = reply.send(None);
                }
                Some(r) if ended(r.status) && !st.actors.contains_key(&id) => {
                    let _ = reply.send(Some(r.clone()));
                }
                Some(_) => st.waiters.entry(id).or_default().push(reply),
            },
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut WorkflowsState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failed) = match evt {
            SupervisionEvent::ActorFailed(cell, e) => {
                tracing::error!(error = %e, "a workflow run actor failed");
                (cell, true)
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, false),
            _ => return Ok(()),
        };
        let Some(id) = st
            .actors
            .iter()
            .find(|(_, (c, _))| c.get_id() == cell.get_id())
            .map(|(id, _)| id.clone())
        else {
            return Ok(());
        };
        let (_, done) = st.actors.remove(&id).unwrap_or((cell, true));
        tracing::debug!(%id, done, failed, "run actor ended");
        if done && !failed {
            return Ok(());
        }
        // The run died before it ended: a saga resumes from its journal
        // (a few times, then it is left for an operator); anything else fails.
        let path = plexus_workflow::journal_path(&st.dir, &id);
        let kind = st.runs.get(&id).map(|r| r.kind);
        let tries = st.resumes.entry(id.clone()).or_default();
        *tries += 1;
        if kind == Some(WorkflowKind::Saga) && path.exists() && *tries <= 3 {
            tracing::warn!(saga = %id, "resuming the saga from its journal");
            spawn_run(&myself, st, id, Job::ResumeSaga { path }).await;
        } else if let Some(r) = st.runs.get_mut(&id) {
            r.status = RunStatus::Failed;
            r.error = Some("the run's actor failed".into());
            let r = r.clone();
            for w in st.waiters.remove(&id).unwrap_or_default() {
                let _ = w.send(Some(r.clone()));
            }
        }
        Ok(())
    }
}

async fn spawn_run(myself: &ActorRef<WorkflowsMsg>, st: &mut WorkflowsState, id: String, job: Job) {
    let args = RunArgs {
        ctx: st.ctx.clone(),
        dir: st.dir.clone(),
        supervisor: myself.clone(),
        job,
    };
    let name = actor_name(
        st.ctx.name(),
        &format!("run:{id}:{}", uuid::Uuid::new_v4().simple()),
    );
    match Actor::spawn_linked(Some(name), RunActor, args, myself.get_cell()).await {
        Ok((a, _)) => {
            st.actors.insert(id, (a.get_cell(), false));
        }
        Err(e) => {
            tracing::error!(run = %id, error = %e, "cannot start a workflow run");
            if let Some(r) = st.runs.get_mut(&id) {
                r.status = RunStatus::Failed;
                r.error = Some(format!("cannot start: {e}"));
            }
        }
    }
}

pub struct RunArgs {
    ctx: Arc<NodeCtx>,
    dir: PathBuf,
    supervisor: ActorRef<WorkflowsMsg>,
    job: Job,
}

#[derive(RactorMessage)]
pub enum RunMsg {
    Go,
}

/// One workflow run (one saga): a supervised actor.
pub struct RunActor;

impl Actor for RunActor {
    type Msg = RunMsg;
    type State = Option<RunArgs>;
    type Arguments = RunArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RunArgs,
    ) -> Result<Option<RunArgs>, ActorProcessingErr> {
        myself.cast(RunMsg::Go)?;
        Ok(Some(args))
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        _msg: RunMsg,
        st: &mut Option<RunArgs>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(a) = st.take() else { return Ok(()) };
        let sup = a.supervisor.clone();
        let observer: Observer = Arc::new(move |r: &RunReport| {
            let _ = sup.cast(WorkflowsMsg::Update(Box::new(r.clone())));
        });
        let exec = NodeExecutor { ctx: a.ctx.clone() };
        let report = match a.job {
            Job::Fresh {
                id,
                workflow,
                input,
            } if workflow.kind() == WorkflowKind::Saga => {
                let mut saga = SagaRun::start(&id, &workflow, input, &a.dir, exec)
                    .map_err(|e| ActorProcessingErr::from(format!("saga {id}: {e}")))?
                    .with_observer(observer);
                saga.run()
                    .await
                    .map_err(|e| ActorProcessingErr::from(format!("saga {id}: {e}")))?
            }
            Job::Fresh {
                id,
                workflow,
                input,
            } => run_observed(&id, &workflow, input, &exec, Some(observer)).await,
            Job::ResumeSaga { path } => {
                let mut saga = SagaRun::resume(&path, exec)
                    .map_err(|e| ActorProcessingErr::from(format!("{}: {e}", path.display())))?
                    .with_observer(observer);
                saga.run()
                    .await
                    .map_err(|e| ActorProcessingErr::from(format!("{}: {e}", path.display())))?
            }
        };
        tracing::info!(run = %report.id, status = ?report.status, "workflow run ended");
        let r = a
            .supervisor
            .call(
                |ack| WorkflowsMsg::Finished(Box::new(report), ack),
                Some(Duration::from_secs(5)),
            )
            .await;
        tracing::debug!(ok = r.is_ok(), "end of run acknowledged");
        myself.stop(None);
        Ok(())
    }
}

/// Longest `wait` an API call may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
