//! An adaptive request-rate limiter per destination (AIMD, as TCP congestion control does):
//! the rate halves each time the destination answers 429, and rises by a small step after
//! each clean one-second window, up to the ceiling (the API's documented limit or the
//! destination's `rate_limit` option). Without a ceiling the limiter lets everything through
//! until the first 429, then starts from half the rate it observed.
//!
//! Not `governor`: its quota is fixed at construction, and AIMD needs to move the rate on
//! every throttle; the pacing itself (one request every `1/rate` seconds) is a few lines.

use std::time::Duration;

use tokio::time::Instant;

/// The slowest a throttled destination is driven, in requests per second.
pub const MIN_RATE: f64 = 0.5;
/// The length of the window after which a clean run raises the rate.
const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct State {
    /// Requests per second; `None` is unthrottled.
    rate: Option<f64>,
    /// When the next request may start.
    next_at: Instant,
    window_start: Instant,
    window_requests: u32,
    window_throttled: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct AimdLimiter {
    ceiling: Option<f64>,
    state: parking_lot::Mutex<State>,
}

impl AimdLimiter {
    /// A limiter starting at `ceiling` requests per second (unthrottled when `None`).
    pub fn new(ceiling: Option<f64>) -> Self {
        let now = Instant::now();
        AimdLimiter {
            ceiling: ceiling.map(|c| c.max(MIN_RATE)),
            state: parking_lot::Mutex::new(State {
                rate: ceiling.map(|c| c.max(MIN_RATE)),
                next_at: now,
                window_start: now,
                window_requests: 0,
                window_throttled: false,
            }),
        }
    }

    /// The configured ceiling.
    pub fn ceiling(&self) -> Option<f64> {
        self.ceiling
    }

    /// The current rate (requests per second), `None` when unthrottled.
    pub fn rate(&self) -> Option<f64> {
        self.state.lock().rate
    }

    /// Waits until the next request may start.
    pub async fn acquire(&self) {
        let at = {
            let mut s = self.state.lock();
            let now = Instant::now();
            if now.duration_since(s.window_start) >= WINDOW {
                if !s.window_throttled
                    && s.window_requests > 0
                    && let Some(r) = s.rate
                {
                    let step = (self.ceiling.unwrap_or(r) * 0.05).max(1.0);
                    let raised = r + step;
                    s.rate = Some(match self.ceiling {
                        Some(c) => raised.min(c),
                        None => raised,
                    });
                }
                s.window_start = now;
                s.window_requests = 0;
                s.window_throttled = false;
            }
            s.window_requests += 1;
            match s.rate {
                Some(r) => {
                    let at = s.next_at.max(now);
                    s.next_at = at + Duration::from_secs_f64(1.0 / r);
                    Some(at)
                }
                None => None,
            }
        };
        if let Some(at) = at {
            tokio::time::sleep_until(at).await;
        }
    }

    /// The destination answered 429: halve the rate and space the next request accordingly.
    pub fn throttled(&self) {
        let mut s = self.state.lock();
        let observed = f64::from(s.window_requests.max(1));
        let base = s.rate.unwrap_or(observed);
        let rate = (base / 2.0).max(MIN_RATE);
        s.rate = Some(rate);
        s.window_throttled = true;
        let now = Instant::now();
        s.next_at = s.next_at.max(now) + Duration::from_secs_f64(1.0 / rate);
        tracing::debug!(rate, "destination throttled; rate halved");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn halves_on_throttle_and_rises_after_clean_windows() {
        let l = AimdLimiter::new(Some(20.0));
        assert_eq!(l.rate(), Some(20.0));
        l.throttled();
        assert_eq!(l.rate(), Some(10.0));
        l.throttled();
        assert_eq!(l.rate(), Some(5.0));
        {
            let mut s = l.state.lock();
            s.window_throttled = false;
            s.window_requests = 3;
            s.window_start = Instant::now() - WINDOW;
            s.next_at = Instant::now();
        }
        l.acquire().await;
        assert_eq!(l.rate(), Some(6.0));
    }

    #[tokio::test]
    async fn unthrottled_until_the_first_429() {
        let l = AimdLimiter::new(None);
        for _ in 0..8 {
            l.acquire().await;
        }
        assert_eq!(l.rate(), None);
        l.throttled();
        assert_eq!(l.rate(), Some(4.0));
    }
}
