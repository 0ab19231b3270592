//! The retry timers: near retries (and first attempts with a delay) wait here in memory,
//! and each goes to its lane when due. Retries further out wait in the database instead,
//! where the scanner finds them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sluice_store::now_ms;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::deliver::dispatcher::Dispatcher;
use crate::shutdown::Shutdown;
use crate::work::{DeliveryTask, ScheduledRetry};

/// The timer task: holds near retries and hands each to the dispatcher when due; returns
/// at shutdown (what it held is pending in the database).
pub(crate) async fn run(
    dispatcher: Arc<Dispatcher>,
    mut retries: mpsc::Receiver<ScheduledRetry>,
    shutdown: Shutdown,
) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut waiting: HashMap<u64, DeliveryTask> = HashMap::new();
    let mut sequence = 0u64;
    loop {
        let next_due = heap.peek().map(|Reverse((due, _))| *due);
        tokio::select! {
            biased;
            () = shutdown.requested() => return,
            retry = retries.recv() => {
                let Some(retry) = retry else { return };
                let wait = retry.due_ms.saturating_sub(now_ms()).max(0);
                let due = Instant::now() + Duration::from_millis(u64::try_from(wait).unwrap_or(0));
                sequence += 1;
                heap.push(Reverse((due, sequence)));
                waiting.insert(sequence, retry.task);
            }
            () = sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let now = Instant::now();
                let mut due_tasks = Vec::new();
                while let Some(Reverse((due, id))) = heap.peek().copied() {
                    if due > now {
                        break;
                    }
                    heap.pop();
                    if let Some(task) = waiting.remove(&id) {
                        due_tasks.push(task);
                    }
                }
                dispatcher.enqueue(due_tasks);
            }
        }
    }
}
