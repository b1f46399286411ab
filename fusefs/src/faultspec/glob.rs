//! Path patterns for fault rules and crash points: `*` (any run of characters within one
//! path component), `?` (one character, not `/`), `[abc]`, `[a-z]`, `[!a-z]` (one character of
//! a class, `^` negates too), and `**` as a whole component (zero or more components).
//! Matched against a path relative to the mount root, without a leading `/` (`wal`,
//! `data/000001.log`).  Hand-written: the rules are few and the matcher allocates nothing.

/// A checked pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    text: String,
}

impl Glob {
    /// Checks the pattern: not empty, no NUL, no unclosed `[`, no empty class, relative.
    pub fn new(text: &str) -> Result<Glob, String> {
        if text.is_empty() {
            return Err("empty path pattern".into());
        }
        if text.contains('\0') {
            return Err("path pattern contains NUL".into());
        }
        if text.starts_with('/') {
            return Err(format!(
                "path pattern {text:?} must be relative to the mount root (no leading /)"
            ));
        }
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'[' {
                match class_end(b, i) {
                    Some(end) => i = end,
                    None => return Err(format!("path pattern {text:?}: unclosed [")),
                }
            } else {
                i += 1;
            }
        }
        Ok(Glob { text: text.into() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `path` (relative, `/`-separated) matches the whole pattern.
    pub fn matches(&self, path: &str) -> bool {
        let pat: Vec<&[u8]> = self.text.as_bytes().split(|&c| c == b'/').collect();
        let comps: Vec<&[u8]> = path.as_bytes().split(|&c| c == b'/').collect();
        match_components(&pat, &comps)
    }
}

fn match_components(pat: &[&[u8]], path: &[&[u8]]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if *first == b"**" => {
            // Zero or more whole components.
            (0..=path.len()).any(|skip| match_components(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((p, prest)) => match_one(first, p) && match_components(rest, prest),
            None => false,
        },
    }
}

/// Index just past the `]` closing the class that opens at `open`, if any.  A `]` right
/// after `[` (or after `[!`) is a member, as in shells.
fn class_end(p: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if i < p.len() && (p[i] == b'!' || p[i] == b'^') {
        i += 1;
    }
    if i < p.len() && p[i] == b']' {
        i += 1;
    }
    while i < p.len() {
        if p[i] == b']' {
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// Whether byte `c` is in the class `p[open..end)`.
fn in_class(p: &[u8], open: usize, end: usize, c: u8) -> bool {
    let mut i = open + 1;
    let negate = p[i] == b'!' || p[i] == b'^';
    if negate {
        i += 1;
    }
    let mut found = false;
    while i < end - 1 {
        if i + 2 < end - 1 && p[i + 1] == b'-' {
            if p[i] <= c && c <= p[i + 2] {
                found = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                found = true;
            }
            i += 1;
        }
    }
    found != negate
}

/// One component against one component pattern (no `/` in either).  Backtracking on the
/// last `*` only: linear in practice, never exponential.
fn match_one(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    while pi < p.len() && p[pi] == b'*' {
                        pi += 1;
                    }
                    star = Some((pi, si));
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some(end) = class_end(p, pi) {
                        if in_class(p, pi, end, s[si]) {
                            pi = end;
                            si += 1;
                            continue;
                        }
                    } else if s[si] == b'[' {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p).unwrap().matches(s)
    }

    #[test]
    fn literals_and_wildcards() {
        assert!(m("wal", "wal"));
        assert!(!m("wal", "wal2"));
        assert!(!m("wal", "dir/wal"));
        assert!(m("*.log", "000001.log"));
        assert!(!m("*.log", "d/000001.log"));
        assert!(m("d/*.log", "d/000001.log"));
        assert!(m("d/*", "d/x"));
        assert!(!m("d/*", "d/x/y"));
        assert!(m("wal-?", "wal-1"));
        assert!(!m("wal-?", "wal-12"));
        assert!(!m("?", "/"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("*", ""));
        assert!(m("**", "a/b/c"));
    }

    #[test]
    fn double_star_spans_components() {
        assert!(m("**/wal", "wal"));
        assert!(m("**/wal", "a/b/wal"));
        assert!(!m("**/wal", "a/b/wal.old"));
        assert!(m("data/**", "data/x/y"));
        assert!(m("data/**", "data"));
        assert!(m("a/**/z", "a/z"));
        assert!(m("a/**/z", "a/b/c/z"));
        assert!(!m("a/**/z", "b/a/z"));
    }

    #[test]
    fn classes() {
        assert!(m("seg[0-9]", "seg7"));
        assert!(!m("seg[0-9]", "sega"));
        assert!(m("seg[!0-9]", "sega"));
        assert!(m("seg[^0-9]", "sega"));
        assert!(!m("seg[!0-9]", "seg3"));
        assert!(m("[ab]x", "bx"));
        assert!(m("[]]", "]"));
        assert!(m("[!]]", "a"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Glob::new("").is_err());
        assert!(Glob::new("/abs").unwrap_err().contains("relative"));
        assert!(Glob::new("seg[0-9").unwrap_err().contains("unclosed"));
        assert!(Glob::new("a\0b").is_err());
    }
}
