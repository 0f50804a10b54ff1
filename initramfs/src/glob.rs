//! fnmatch-style globs, as used by the patterns in `modules.alias`.
//!
//! Supports `*`, `?` and bracket classes (`[abc]`, `[0-9]`, `[!x]`, `[^x]`, `]` first is
//! literal). A `[` without its closing `]` is a literal. No escapes and no special
//! treatment of `/`, matching what kmod does with alias patterns. Works on bytes:
//! modaliases are ASCII.

/// Whether `text` matches `pattern` as a whole.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: pattern index after it, and the text index it has absorbed up to.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if pattern.get(p) == Some(&b'*') {
            p += 1;
            backtrack = Some((p, t));
            continue;
        }
        if let Some(width) = single_match(&pattern[p..], text[t]) {
            p += width;
            t += 1;
            continue;
        }
        match backtrack {
            Some((after_star, absorbed)) => {
                p = after_star;
                t = absorbed + 1;
                backtrack = Some((after_star, absorbed + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// If the pattern's first token (not `*`) matches `c`, how many pattern bytes it spans.
fn single_match(pattern: &[u8], c: u8) -> Option<usize> {
    match pattern.first()? {
        b'?' => Some(1),
        b'[' => match class_match(pattern, c) {
            Some((true, width)) => Some(width),
            Some((false, _)) => None,
            None => (c == b'[').then_some(1),
        },
        &literal => (literal == c).then_some(1),
    }
}

/// Matches `c` against the class at the start of `pattern` (which begins with `[`).
/// Returns whether it matched and the class's width, or `None` if the class is unterminated.
fn class_match(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let start = *pattern.get(i)?;
        if start == b']' && !first {
            return Some((matched != negated, i + 1));
        }
        first = false;
        match (pattern.get(i + 1), pattern.get(i + 2)) {
            (Some(b'-'), Some(&end)) if end != b']' => {
                matched |= (start..=end).contains(&c);
                i += 3;
            }
            _ => {
                matched |= start == c;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn table() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, bool)] = &[
            ("literal equal", "abc", "abc", true),
            ("literal differs", "abc", "abd", false),
            ("literal prefix only", "abc", "abcd", false),
            ("text shorter", "abcd", "abc", false),
            ("empty matches empty", "", "", true),
            ("empty pattern vs text", "", "a", false),
            ("star alone matches empty", "*", "", true),
            ("star alone matches anything", "*", "pci:v00001AF4", true),
            ("trailing star", "virtio:d00000001v*", "virtio:d00000001v00001AF4", true),
            ("trailing star wrong device", "virtio:d00000001v*", "virtio:d00000002v00001AF4", false),
            ("star matches empty in middle", "a*b", "ab", true),
            ("star needs backtracking", "a*bc", "abxbc", true),
            ("several stars", "pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", true),
            ("several stars wrong vendor", "pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00008086d00001000sv00001AF4sd00000001bc02sc00i00", false),
            ("class code filter", "pci:v*d*sv*sd*bc01sc08i02*", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", true),
            ("class code filter mismatch", "pci:v*d*sv*sd*bc01sc08i02*", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc06i01", false),
            ("question mark", "a?c", "abc", true),
            ("question mark needs a char", "a?c", "ac", false),
            ("class set", "d0[0-2]*", "d01x", true),
            ("class range upper edge", "d0[0-2]", "d02", true),
            ("class range outside", "d0[0-2]", "d03", false),
            ("class several ranges", "[a-cx-z]", "y", true),
            ("class list", "[abc]", "d", false),
            ("negated class bang", "[!0-9]", "a", true),
            ("negated class bang rejects", "[!0-9]", "5", false),
            ("negated class caret", "[^a]", "b", true),
            ("bracket first is literal", "[]a]", "]", true),
            ("dash last is literal", "[a-]", "-", true),
            ("unterminated class is literal", "a[b", "a[b", true),
            ("unterminated class not a class", "a[b", "ab", false),
            ("class then star", "usb:v1645p0007d01[0-2]*dc*", "usb:v1645p0007d0110dc00", true),
            ("class then star mismatch", "usb:v1645p0007d01[0-2]*dc*", "usb:v1645p0007d0130dc00", false),
            ("star then class at end", "*[0-9]", "abc7", true),
            ("case sensitive", "pci:v00001af4*", "pci:v00001AF4d0", false),
        ];
        for &(name, pattern, text, expected) in cases {
            assert_eq!(glob_match(pattern, text), expected, "case {name:?}: {pattern:?} vs {text:?}");
        }
    }
}
