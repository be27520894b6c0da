//! Python string behaviour that LASER's prompts depend on.

/// Python's `str.isspace()` for one character: Unicode `White_Space` (what Rust's
/// [`char::is_whitespace`] tests) plus the four information separators U+001C..U+001F,
/// which Python also counts as whitespace.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no argument.
pub fn python_strip(s: &str) -> &str {
    s.trim_matches(is_python_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_like_python() {
        assert_eq!(python_strip("  a b \n"), "a b");
        assert_eq!(python_strip("\u{1c}\u{a0}x\u{3000}\u{1f}"), "x");
        // U+200B ZERO WIDTH SPACE is not whitespace for Python either.
        assert_eq!(python_strip("\u{200b}x"), "\u{200b}x");
        assert_eq!(python_strip(" \t\r\n"), "");
    }
}
