//! Shell-style globs: `*` (any run of characters but `/`), `**` (any run,
//! `/` included), `?` (one character but `/`), `[abc]`, `[a-z]`, `[!a]`.

/// Whether `text` matches `pattern` entirely.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    match_at(&p, &t)
}

fn match_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => {
            let (crosses, rest) = if p.get(1) == Some(&'*') {
                (true, &p[2..])
            } else {
                (false, &p[1..])
            };
            for skip in 0..=t.len() {
                if match_at(rest, &t[skip..]) {
                    return true;
                }
                if skip < t.len() && !crosses && t[skip] == '/' {
                    return false;
                }
            }
            false
        }
        Some('?') => matches!(t.first(), Some(c) if *c != '/') && match_at(&p[1..], &t[1..]),
        Some('[') => match (class(&p[1..]), t.first()) {
            (Some((hit, len)), Some(&c)) => hit(c) && match_at(&p[1 + len..], &t[1..]),
            // An unclosed `[` is a plain character.
            (None, Some('[')) => match_at(&p[1..], &t[1..]),
            _ => false,
        },
        Some(&c) => t.first() == Some(&c) && match_at(&p[1..], &t[1..]),
    }
}

/// The class after `[`: a test and how many characters it took (with `]`).
#[expect(clippy::type_complexity, reason = "a closure and a length")]
fn class(p: &[char]) -> Option<(Box<dyn Fn(char) -> bool + '_>, usize)> {
    let (negated, start) = match p.first() {
        Some('!' | '^') => (true, 1),
        _ => (false, 0),
    };
    // A `]` first in the class is a member.
    let close = p
        .iter()
        .enumerate()
        .skip(start + 1)
        .find(|(_, c)| **c == ']')
        .map(|(i, _)| i)?;
    let members = &p[start..close];
    let hit = move |c: char| {
        let mut i = 0;
        let mut found = false;
        while i < members.len() {
            if i + 2 < members.len() && members[i + 1] == '-' {
                found |= members[i] <= c && c <= members[i + 2];
                i += 3;
            } else {
                found |= members[i] == c;
                i += 1;
            }
        }
        found != negated
    };
    Some((Box::new(hit), close + 1))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("httpserver", "httpserver"));
        assert!(!matches("httpserver", "httpserver2"));
        assert!(matches("http*", "httpserver"));
        assert!(matches("/usr/*/api", "/usr/bin/api"));
        assert!(!matches("/usr/*/api", "/usr/local/bin/api"));
        assert!(matches("/usr/**/api", "/usr/local/bin/api"));
        assert!(matches("api-?", "api-1"));
        assert!(matches("api-[0-9]", "api-7"));
        assert!(!matches("api-[!0-9]", "api-7"));
        assert!(matches("a[", "a["));
    }
}
