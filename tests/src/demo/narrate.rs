//! What the demo prints: one narration line per step, the commands it runs with their output,
//! and a live view. On a terminal the live view (status table, client counters) is redrawn in
//! place and colors mark blue and green; anywhere else (a pipe, a CI log) there are no escape
//! sequences at all and the tables are printed once, when a step ends. `NO_COLOR` turns colors
//! off on a terminal too.

use std::io::Write as _;

use splitter::config::ColorName;

/// Where the demo's output goes and how it may be drawn.
pub struct Terminal {
    /// stdout is a terminal: the live view may redraw in place.
    tty: bool,
    color: bool,
    /// Rows of the live view on screen now (erased before anything else is printed).
    live_rows: usize,
}

#[derive(Clone, Copy)]
pub enum Style {
    Blue,
    Green,
    Red,
    Bold,
    Dim,
}

impl Terminal {
    pub fn detect() -> Self {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1;
        let color = tty
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::env::var("TERM").map_or(true, |term| term != "dumb");
        Self {
            tty,
            color,
            live_rows: 0,
        }
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// `text` in `style` (unchanged without colors).
    pub fn paint(&self, style: Style, text: &str) -> String {
        if !self.color {
            return text.to_owned();
        }
        let code = match style {
            Style::Blue => "1;34",
            Style::Green => "1;32",
            Style::Red => "1;31",
            Style::Bold => "1",
            Style::Dim => "2",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// `text` in `color`'s color.
    pub fn color(&self, color: ColorName, text: &str) -> String {
        match color {
            ColorName::Blue => self.paint(Style::Blue, text),
            ColorName::Green => self.paint(Style::Green, text),
        }
    }

    fn print(&mut self, text: &str) {
        self.erase_live();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// A section heading: `== Step 2/4  title`.
    pub fn heading(&mut self, text: &str) {
        let line = format!("\n{}", self.paint(Style::Bold, &format!("== {text}")));
        self.print(&line);
    }

    /// One narration line.
    pub fn say(&mut self, text: &str) {
        self.print(&format!("   {text}"));
    }

    /// A command the demo ran, and what it printed.
    pub fn command(&mut self, command: &str, output: &str) {
        let line = format!("   {}", self.paint(Style::Bold, &format!("$ {command}")));
        self.print(&line);
        self.block(output);
    }

    /// Indented text (tables).
    pub fn block(&mut self, text: &str) {
        let indented: Vec<String> = text
            .trim_end()
            .lines()
            .map(|line| format!("     {line}"))
            .collect();
        self.print(&indented.join("\n"));
    }

    /// On a terminal: replaces the live view with `text` (cut to the terminal's width so that
    /// no line wraps and the rows can be counted). Elsewhere: nothing; the caller prints a
    /// snapshot when the step ends.
    pub fn live(&mut self, text: &str) {
        if !self.tty {
            return;
        }
        self.erase_live();
        let width = terminal_width().saturating_sub(1).max(20);
        let mut out = std::io::stdout().lock();
        let mut rows = 0;
        for line in text.trim_end().lines() {
            let _ = writeln!(out, "{}", cut(&format!("     {line}"), width));
            rows += 1;
        }
        let _ = out.flush();
        self.live_rows = rows;
    }

    fn erase_live(&mut self) {
        if self.live_rows > 0 {
            let mut out = std::io::stdout().lock();
            // Up to the first row of the live view, erase to the end of the screen.
            let _ = write!(out, "\x1b[{}A\x1b[J", self.live_rows);
            let _ = out.flush();
            self.live_rows = 0;
        }
    }

    /// Erases the live view (on a terminal).
    pub fn end_live(&mut self) {
        self.erase_live();
    }
}

/// The first `width` visible characters of `line`; color sequences are kept, not counted.
fn cut(line: &str, width: usize) -> String {
    let mut out = String::new();
    let mut visible = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            out.push(c);
            for c in chars.by_ref() {
                out.push(c);
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if visible < width {
            out.push(c);
            visible += 1;
        }
    }
    out
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize; on failure we fall back to 80 columns.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) == 0 && size.ws_col > 0 {
            size.ws_col as usize
        } else {
            80
        }
    }
}

/// `0.1234` as `12.3%`.
pub fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_counts_visible_characters_only() {
        let line = "ab\x1b[1;34mcdef\x1b[0mgh";
        assert_eq!(cut(line, 4), "ab\x1b[1;34mcd\x1b[0m");
        assert_eq!(cut(line, 100), line);
        assert_eq!(cut("abc", 0), "");
    }

    #[test]
    fn percent_has_one_decimal() {
        assert_eq!(percent(0.0123), "1.2%");
        assert_eq!(percent(1.0), "100.0%");
    }
}
