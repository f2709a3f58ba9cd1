//! `-c`/`--summary`: calls, errors and time per system call, as `strace -c`
//! tabulates them.
//!
//! As strace counts, a call is counted when it returns: `exit` and
//! `exit_group` (which never do) are left out of the table.

use std::fmt::Write as _;

use agent_common::syscalls::MAX_SYSCALLS;

use super::filter;

/// Totals of one system call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallTotals {
    pub calls: u64,
    pub errors: u64,
    /// Time inside the call, summed.
    pub total_ns: u64,
}

/// Totals per system call, by number.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    by_nr: Vec<SyscallTotals>,
}

/// Whether a return value is an error (`-4095..=-1`, as the kernel and
/// strace read it).
pub fn is_error(ret: i64) -> bool {
    (-4095..0).contains(&ret)
}

impl Summary {
    /// Counts one returned call; a number past the kernel's bitmap
    /// (`MAX_SYSCALLS`) is not counted.
    pub fn add(&mut self, nr: u32, ret: i64, duration_ns: u64) {
        if nr >= MAX_SYSCALLS {
            return;
        }
        let nr = nr as usize;
        if nr >= self.by_nr.len() {
            self.by_nr.resize(nr + 1, SyscallTotals::default());
        }
        let totals = &mut self.by_nr[nr];
        totals.calls += 1;
        totals.errors += u64::from(is_error(ret));
        totals.total_ns = totals.total_ns.saturating_add(duration_ns);
    }

    /// Sets the totals of system call `nr` (from the kernel's per-CPU
    /// counts, summed).
    pub fn set(&mut self, nr: u32, totals: SyscallTotals) {
        if nr >= MAX_SYSCALLS {
            return;
        }
        let nr = nr as usize;
        if nr >= self.by_nr.len() {
            self.by_nr.resize(nr + 1, SyscallTotals::default());
        }
        self.by_nr[nr] = totals;
    }

    /// The system calls made, with their totals: most time first, then
    /// most calls, then by name.
    pub fn rows(&self) -> Vec<(String, SyscallTotals)> {
        let mut rows: Vec<(String, SyscallTotals)> = self
            .by_nr
            .iter()
            .enumerate()
            .filter(|(_, t)| t.calls > 0)
            .map(|(nr, t)| (filter::name(nr as u32).into_owned(), *t))
            .collect();
        rows.sort_by(|(an, a), (bn, b)| {
            b.total_ns
                .cmp(&a.total_ns)
                .then(b.calls.cmp(&a.calls))
                .then(an.cmp(bn))
        });
        rows
    }

    /// The table, as `strace -c` prints it.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let total_ns = rows
            .iter()
            .fold(0u64, |sum, (_, t)| sum.saturating_add(t.total_ns));
        let calls: u64 = rows.iter().map(|(_, t)| t.calls).sum();
        let errors: u64 = rows.iter().map(|(_, t)| t.errors).sum();
        let rule = "------ ----------- ----------- --------- --------- ----------------\n";
        let mut out = String::new();
        out.push_str("% time     seconds  usecs/call     calls    errors syscall\n");
        out.push_str(rule);
        let line = |out: &mut String, name: &str, t: &SyscallTotals| {
            let percent = if total_ns == 0 {
                0.0
            } else {
                t.total_ns as f64 * 100.0 / total_ns as f64
            };
            let errors = if t.errors == 0 {
                String::new()
            } else {
                t.errors.to_string()
            };
            let _ = writeln!(
                out,
                "{percent:6.2} {:11.6} {:11} {:9} {errors:>9} {name}",
                t.total_ns as f64 / 1e9,
                t.total_ns / 1000 / t.calls.max(1),
                t.calls,
            );
        };
        for (name, t) in &rows {
            line(&mut out, name, t);
        }
        out.push_str(rule);
        let total = SyscallTotals {
            calls,
            errors,
            total_ns,
        };
        line(&mut out, "total", &total);
        // strace prints 100.00 for the total even when no time was measured.
        if total_ns == 0
            && let Some(at) = out.rfind("  0.00")
        {
            out.replace_range(at..at + 6, "100.00");
        }
        out
    }

    /// The `--summary-file` lines: `syscall.NAME.calls=N`,
    /// `syscall.NAME.errors=N`, `syscall.NAME.usecs=N` per system call made.
    pub fn summary_lines(&self) -> String {
        let mut out = String::new();
        for (name, t) in self.rows() {
            let _ = writeln!(out, "syscall.{name}.calls={}", t.calls);
            let _ = writeln!(out, "syscall.{name}.errors={}", t.errors);
            let _ = writeln!(out, "syscall.{name}.usecs={}", t.total_ns / 1000);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabulates_like_strace() {
        let mut s = Summary::default();
        s.add(1, 5, 3_000);
        s.add(1, 5, 1_000);
        s.add(257, -2, 4_000);
        let table = s.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "% time     seconds  usecs/call     calls    errors syscall"
        );
        assert_eq!(
            lines[2],
            " 50.00    0.000004           2         2           write"
        );
        assert_eq!(
            lines[3],
            " 50.00    0.000004           4         1         1 openat"
        );
        assert_eq!(
            lines[5],
            "100.00    0.000008           2         3         1 total"
        );
        s.add(MAX_SYSCALLS, 0, 1);
        s.add(u32::MAX, 0, u64::MAX);
        assert_eq!(s.rows().len(), 2, "numbers past the bitmap are not counted");
        assert_eq!(
            s.summary_lines(),
            "syscall.write.calls=2\nsyscall.write.errors=0\nsyscall.write.usecs=4\n\
             syscall.openat.calls=1\nsyscall.openat.errors=1\nsyscall.openat.usecs=4\n"
        );
    }
}
