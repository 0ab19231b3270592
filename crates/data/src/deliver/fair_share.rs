//! Fair shares between workspaces for the scanner's claims: deficit round robin (equal
//! weights) over the workspaces that have due work, so a workspace with a backlog of a
//! million cannot make another's few deliveries wait behind it in due order.
//!
//! Each pass the room memory has is split into one quantum per workspace, starting from a
//! cursor that moves on by one workspace each pass; a workspace that takes less than its
//! quantum (it had less due) leaves the rest to the next round among those that took all of
//! theirs; when there are more workspaces than room, each of the first `room` from the
//! cursor gets one and the cursor moves past them, so every workspace comes round. See
//! `docs/concurrency.md`.

/// The workspaces of one pass, in round-robin order, with the room each may take.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    /// Where the next pass starts, as an index into the sorted list of workspaces with
    /// work (a workspace that leaves shifts it by one: harmless).
    cursor: usize,
    /// When the last list of workspaces was cut at its limit, its last workspace: the next
    /// list starts after it, so workspaces beyond the limit come round too.
    after: Option<String>,
}

impl RoundRobin {
    /// Where the next list of workspaces starts: after this one, or from the first.
    pub(crate) fn resume_after(&self) -> Option<String> {
        self.after.clone()
    }

    /// Notes the list of workspaces a pass got, which holds at most `limit`.
    pub(crate) fn listed(&mut self, workspaces: &[String], limit: usize) {
        self.after = if workspaces.len() >= limit {
            workspaces.last().cloned()
        } else {
            None
        };
    }

    /// This pass's quanta: `(index into workspaces, room)` in the order to claim them,
    /// splitting `room` over `workspaces` equally (the remainder to the first ones).
    pub(crate) fn quanta(&mut self, workspaces: usize, room: usize) -> Vec<(usize, usize)> {
        if workspaces == 0 || room == 0 {
            return Vec::new();
        }
        let start = self.cursor % workspaces;
        let order = (0..workspaces).map(|i| (start + i) % workspaces);
        let quanta: Vec<(usize, usize)> = if room >= workspaces {
            let (each, extra) = (room / workspaces, room % workspaces);
            order
                .enumerate()
                .map(|(i, w)| (w, each + usize::from(i < extra)))
                .collect()
        } else {
            order.take(room).map(|w| (w, 1)).collect()
        };
        // The next pass starts after the ones that got the remainder (or the single ones).
        self.cursor = start
            + if room >= workspaces {
                (room % workspaces).max(1)
            } else {
                room
            };
        quanta
    }
}

/// Splits `room` again among the workspaces that took all of their last quantum
/// (`hungry`, in the order they were served), equally, the remainder to the first.
pub(crate) fn again(hungry: &[usize], room: usize) -> Vec<(usize, usize)> {
    if hungry.is_empty() || room == 0 {
        return Vec::new();
    }
    let (each, extra) = (room / hungry.len(), room % hungry.len());
    hungry
        .iter()
        .enumerate()
        .map(|(i, &w)| (w, each + usize::from(i < extra)))
        .filter(|(_, q)| *q > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_split_equally_and_the_start_moves_round() {
        let mut rr = RoundRobin::default();
        assert_eq!(rr.quanta(2, 500), vec![(0, 250), (1, 250)]);
        assert_eq!(rr.quanta(3, 10), vec![(1, 4), (2, 3), (0, 3)]);
        assert_eq!(rr.quanta(3, 10), vec![(2, 4), (0, 3), (1, 3)]);
    }

    #[test]
    fn more_workspaces_than_room_take_turns() {
        let mut rr = RoundRobin::default();
        assert_eq!(rr.quanta(5, 2), vec![(0, 1), (1, 1)]);
        assert_eq!(rr.quanta(5, 2), vec![(2, 1), (3, 1)]);
        assert_eq!(rr.quanta(5, 2), vec![(4, 1), (0, 1)]);
    }

    #[test]
    fn a_list_cut_at_its_limit_resumes_after_its_last_workspace() {
        let mut rr = RoundRobin::default();
        assert_eq!(rr.resume_after(), None);
        let full: Vec<String> = ["wrk_a", "wrk_b"].map(String::from).to_vec();
        rr.listed(&full, 2);
        assert_eq!(rr.resume_after().as_deref(), Some("wrk_b"));
        // A shorter list reached the end: the next starts from the first again.
        rr.listed(&["wrk_c".to_owned()], 2);
        assert_eq!(rr.resume_after(), None);
    }

    #[test]
    fn what_one_leaves_goes_to_those_still_hungry() {
        // A small workspace took 3 of its 250: the big ones share the other 247.
        assert_eq!(again(&[0, 2], 247), vec![(0, 124), (2, 123)]);
        assert_eq!(again(&[1], 0), vec![]);
        assert_eq!(again(&[0, 1, 2], 2), vec![(0, 1), (1, 1)]);
    }

    #[test]
    fn a_small_workspace_is_served_in_the_first_pass_whatever_the_backlog() {
        // Workspace 0 has 100,000 due, workspace 1 has 5: one pass of 500 room claims all
        // of 1's and 495 of 0's, where due order would have taken 500 of 0's.
        let due = [100_000usize, 5];
        let mut rr = RoundRobin::default();
        let mut taken = [0usize; 2];
        let mut hungry = Vec::new();
        for (w, q) in rr.quanta(2, 500) {
            let got = q.min(due[w] - taken[w]);
            taken[w] += got;
            if got == q {
                hungry.push(w);
            }
        }
        let left = 500 - taken.iter().sum::<usize>();
        for (w, q) in again(&hungry, left) {
            taken[w] += q.min(due[w] - taken[w]);
        }
        assert_eq!(taken, [495, 5]);
    }
}
