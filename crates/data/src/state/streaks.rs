//! Endpoint failure streaks: each subscription's current run of failed attempts, which
//! decides when an endpoint that keeps failing is disabled (every attempt failed for
//! `disable_after_failing_for`, or a count of failures in a row). Kept in memory for every
//! attempt, persisted in `dp_state` by the writer so a restart does not reset the clock.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use sluice_store::data::state;

/// The `dp_state` name prefix of an endpoint's failure streak.
pub(crate) const STREAK_STATE_PREFIX: &str = "endpoint_failing:";

/// An endpoint's current run of failed attempts, kept per subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Streak {
    /// When the first failure of the run happened, unix milliseconds.
    pub(crate) since_ms: i64,
    /// How many attempts in a row failed.
    pub(crate) failures: u32,
}

impl Streak {
    /// The `dp_state` value: `since_ms,failures`.
    pub(crate) fn encode(&self) -> String {
        format!("{},{}", self.since_ms, self.failures)
    }

    pub(crate) fn decode(value: &str) -> Option<Streak> {
        let (since, failures) = value.split_once(',')?;
        Some(Streak {
            since_ms: since.parse().ok()?,
            failures: failures.parse().ok()?,
        })
    }

    /// The streak after one more attempt: a success ends it, a failure extends or starts it.
    pub(crate) fn after(current: Option<Streak>, success: bool, now_ms: i64) -> Option<Streak> {
        if success {
            return None;
        }
        Some(match current {
            Some(streak) => Streak {
                since_ms: streak.since_ms,
                failures: streak.failures.saturating_add(1),
            },
            None => Streak {
                since_ms: now_ms,
                failures: 1,
            },
        })
    }

    /// Whether an endpoint failing like this should be disabled: every attempt failed for
    /// `failing_for`, or (when configured) `max_failures` attempts in a row failed.
    pub(crate) fn warrants_disable(
        &self,
        now_ms: i64,
        failing_for: Duration,
        max_failures: Option<u32>,
    ) -> bool {
        if max_failures.is_some_and(|max| self.failures >= max) {
            return true;
        }
        let failing_for_ms = i64::try_from(failing_for.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(self.since_ms) >= failing_for_ms
    }

    /// Why a subscription is disabled after this run of failures, for people.
    pub(crate) fn disable_reason(&self) -> String {
        format!(
            "{} attempts in a row failed since {}",
            self.failures,
            chrono::DateTime::from_timestamp_millis(self.since_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default()
        )
    }
}

/// How a streak changed with an attempt, for the writer to persist.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StreakChange {
    Unchanged,
    Set(Streak),
    Clear,
}

/// When a failing endpoint is disabled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DisableAfter {
    /// Every attempt failed for this long.
    pub(crate) failing_for: Duration,
    /// Or this many attempts in a row failed (when set).
    pub(crate) failed_attempts: Option<u32>,
}

/// Every endpoint's current streak, by subscription id.
pub(crate) struct Streaks {
    by_subscription: Mutex<foldhash::HashMap<String, Streak>>,
    disable_after: DisableAfter,
}

impl Streaks {
    /// Starts from the streaks a previous run persisted.
    pub(crate) fn new(
        loaded: foldhash::HashMap<String, Streak>,
        disable_after: DisableAfter,
    ) -> Streaks {
        Streaks {
            by_subscription: Mutex::new(loaded),
            disable_after,
        }
    }

    /// Records one attempt's result. Returns what to persist, and the streak when it now
    /// warrants disabling the subscription: failing for `failing_for` when the
    /// subscription's policy sets it, for the configured period otherwise.
    pub(crate) fn note(
        &self,
        subscription_id: &str,
        success: bool,
        now: i64,
        failing_for: Option<Duration>,
    ) -> (StreakChange, Option<Streak>) {
        let mut streaks = self.lock();
        let before = streaks.get(subscription_id).copied();
        let after = Streak::after(before, success, now);
        let change = match (before, after) {
            (_, Some(streak)) => {
                streaks.insert(subscription_id.to_owned(), streak);
                StreakChange::Set(streak)
            }
            (Some(_), None) => {
                streaks.remove(subscription_id);
                StreakChange::Clear
            }
            (None, None) => StreakChange::Unchanged,
        };
        let exceeded = after.filter(|streak| {
            streak.warrants_disable(
                now,
                failing_for.unwrap_or(self.disable_after.failing_for),
                self.disable_after.failed_attempts,
            )
        });
        (change, exceeded)
    }

    /// Forgets a subscription's streak (it was disabled; enabling it starts afresh).
    pub(crate) fn forget(&self, subscription_id: &str) {
        self.lock().remove(subscription_id);
    }

    fn lock(&self) -> MutexGuard<'_, foldhash::HashMap<String, Streak>> {
        // The map is consistent after every statement, so a poisoned lock is still usable.
        self.by_subscription
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Loads every persisted failure streak.
pub(crate) async fn load<C: ConnectionTrait>(
    db: &C,
) -> Result<foldhash::HashMap<String, Streak>, DbErr> {
    let rows = state::Entity::find()
        .filter(state::Column::Name.starts_with(STREAK_STATE_PREFIX))
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let id = row.name.strip_prefix(STREAK_STATE_PREFIX)?.to_owned();
            Some((id, Streak::decode(&row.value)?))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn streaks() {
        let day = Duration::from_secs(86_400);
        let s = Streak::after(None, false, 1_000).unwrap();
        assert_eq!(
            s,
            Streak {
                since_ms: 1_000,
                failures: 1
            }
        );
        let s = Streak::after(Some(s), false, 5_000).unwrap();
        assert_eq!(
            s,
            Streak {
                since_ms: 1_000,
                failures: 2
            }
        );
        assert_eq!(Streak::after(Some(s), true, 6_000), None);

        assert!(!s.warrants_disable(1_000 + 86_399_999, day, None));
        assert!(s.warrants_disable(1_000 + 86_400_000, day, None));
        assert!(s.warrants_disable(2_000, day, Some(2)));
        assert!(!s.warrants_disable(2_000, day, Some(3)));

        assert_eq!(Streak::decode(&s.encode()), Some(s));
        assert_eq!(Streak::decode("x,1"), None);
        assert_eq!(Streak::decode("1"), None);
    }

    #[test]
    fn the_registry_reports_changes_and_the_streak_that_disables() {
        let streaks = Streaks::new(
            foldhash::HashMap::default(),
            DisableAfter {
                failing_for: Duration::from_secs(3600),
                failed_attempts: Some(2),
            },
        );
        assert!(matches!(
            streaks.note("sub_1", true, 1, None),
            (StreakChange::Unchanged, None)
        ));
        assert!(matches!(
            streaks.note("sub_1", false, 1, None),
            (StreakChange::Set(_), None)
        ));
        let (change, exceeded) = streaks.note("sub_1", false, 2, None);
        assert!(matches!(change, StreakChange::Set(_)));
        assert_eq!(exceeded.map(|s| s.failures), Some(2));
        assert!(matches!(
            streaks.note("sub_1", true, 3, None),
            (StreakChange::Clear, None)
        ));
        streaks.note("sub_2", false, 1, None);
        streaks.forget("sub_2");
        assert!(matches!(
            streaks.note("sub_2", true, 2, None),
            (StreakChange::Unchanged, None)
        ));
    }
}
