//! UTC calendar fields of a Unix time, for time-partitioned names (S3 keys, file sink paths).

/// A UTC time to the hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
}

impl Civil {
    /// From milliseconds since the Unix epoch (civil-from-days, Howard Hinnant's algorithm).
    pub fn from_ms(ms: u64) -> Civil {
        let secs = ms / 1000;
        let days = (secs / 86_400) as i64;
        let hour = ((secs % 86_400) / 3600) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour,
        }
    }

    pub fn now() -> Civil {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Civil::from_ms(ms)
    }

    /// `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// `template` with `%Y`, `%m`, `%d`, `%H` filled in (`%%` is a `%`).
    pub fn render(&self, template: &str) -> String {
        let mut out = String::with_capacity(template.len() + 8);
        let mut chars = template.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('Y') => out.push_str(&format!("{:04}", self.year)),
                Some('m') => out.push_str(&format!("{:02}", self.month)),
                Some('d') => out.push_str(&format!("{:02}", self.day)),
                Some('H') => out.push_str(&format!("{:02}", self.hour)),
                Some(o) => {
                    out.push('%');
                    if o != '%' {
                        out.push(o);
                    }
                }
                None => out.push('%'),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_fields_and_templates() {
        let c = |ms| Civil::from_ms(ms);
        assert_eq!(c(0).date(), "1970-01-01");
        // 2024-02-29T23:59:59Z, a leap day.
        assert_eq!(
            (c(1_709_251_199_000).date(), c(1_709_251_199_000).hour),
            ("2024-02-29".into(), 23)
        );
        // 2026-11-22T22:30:00Z.
        let t = c(1_795_386_600_000);
        assert_eq!(
            t.render("records-%Y-%m-%d-%H.jsonl"),
            "records-2026-11-22-22.jsonl"
        );
        assert_eq!(t.render("100%% %q"), "100% %q");
    }
}
