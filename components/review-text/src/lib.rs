//! Review text preprocessing: [`clean`] (NFC, whitespace, repeated jamo and punctuation squeezed,
//! URLs and emoji removed) and [`Sentiment::from_rating`] (1-4 negative, 9-10 positive).
//!
//! Pure functions, so the review job (wasm) and the evaluation tools (native) clean text alike.

use unicode_normalization::UnicodeNormalization as _;

/// The longest run of one repeated jamo or punctuation mark kept (`ㅋㅋㅋㅋㅋ` -> `ㅋㅋ`).
pub const MAX_REPEAT: usize = 2;

/// A review's sentiment label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sentiment {
    Negative,
    Positive,
}

impl Sentiment {
    /// From a 1-10 rating: 1-4 negative, 9-10 positive, 5-8 none (left to the text classifier).
    pub fn from_rating(rating: i64) -> Option<Sentiment> {
        match rating {
            1..=4 => Some(Sentiment::Negative),
            9..=10 => Some(Sentiment::Positive),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sentiment::Negative => "negative",
            Sentiment::Positive => "positive",
        }
    }
}

/// Hangul compatibility jamo (ㄱ-ㅎ, ㅏ-ㅣ): what ㅋㅋㅋ and ㅠㅠ are written with.
fn is_jamo(c: char) -> bool {
    ('\u{3131}'..='\u{318E}').contains(&c)
}

fn is_emoji(c: char) -> bool {
    matches!(c,
        '\u{1F000}'..='\u{1FAFF}'   // emoticons, symbols, pictographs, transport, flags...
        | '\u{2600}'..='\u{27BF}'   // miscellaneous symbols and dingbats
        | '\u{2B00}'..='\u{2BFF}'   // arrows and stars used as emoji
        | '\u{FE00}'..='\u{FE0F}'   // variation selectors
        | '\u{200D}'                // zero-width joiner
        | '\u{E0020}'..='\u{E007F}' // tag characters
    )
}

/// Text with URLs (`http://`, `https://`, `www.`) removed up to the next whitespace.
fn strip_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split_whitespace().enumerate() {
        let lower = word.to_ascii_lowercase();
        let start = ["http://", "https://", "www."]
            .iter()
            .filter_map(|p| lower.find(p))
            .min();
        let kept = match start {
            Some(at) => &word[..at],
            None => word,
        };
        if i > 0 {
            out.push(' ');
        }
        out.push_str(kept);
    }
    out
}

/// Cleans a review: NFC; URLs, emoji and control characters removed; runs of one jamo or
/// punctuation mark squeezed to [`MAX_REPEAT`]; whitespace collapsed to single spaces and trimmed.
/// `None` when nothing is left.
pub fn clean(text: &str) -> Option<String> {
    let normalized: String = text.nfc().collect();
    let without_urls = strip_urls(&normalized);
    let mut out = String::with_capacity(without_urls.len());
    let mut previous: Option<char> = None;
    let mut run = 0usize;
    let mut pending_space = false;
    for c in without_urls.chars() {
        if is_emoji(c) || (c.is_control() && !c.is_whitespace()) {
            continue;
        }
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            previous = None;
            continue;
        }
        if Some(c) == previous {
            run += 1;
        } else {
            run = 1;
        }
        previous = Some(c);
        if run > MAX_REPEAT && (is_jamo(c) || c.is_ascii_punctuation() || "…~♥♡ㆍ".contains(c))
        {
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    (!out.is_empty()).then_some(out)
}

/// Buckets of the sentiment classifier's hashed features (`2^bits` of them).
pub const SENTIMENT_BITS: u32 = 18;

/// 64-bit FNV-1a of `text`'s UTF-8 bytes.
pub fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01B3);
    }
    hash
}

/// The sentiment classifier's text features of a cleaned review, as `scripts/model/sentiment.py`
/// trains them: every 1-, 2- and 3-character window of the text padded with a space each side
/// (`"n:window"`) and every word (`"w:word"`), hashed with [`fnv1a`] into `2^bits` buckets; the
/// distinct buckets, sorted. Each counts `1 / sqrt(len)` in the model.
pub fn sentiment_features(text: &str, bits: u32) -> Vec<u32> {
    let padded: Vec<char> = format!(" {text} ").chars().collect();
    let modulus = 1u64 << bits;
    let mut found = Vec::with_capacity(padded.len() * 3 + 8);
    let mut key = String::new();
    for n in 1..=3usize {
        for window in padded.windows(n) {
            key.clear();
            key.push_str(&n.to_string());
            key.push(':');
            key.extend(window);
            found.push((fnv1a(&key) % modulus) as u32);
        }
    }
    for word in text.split_whitespace() {
        found.push((fnv1a(&format!("w:{word}")) % modulus) as u32);
    }
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeezes_repeats_and_strips_noise() {
        assert_eq!(
            clean("재밌어요ㅋㅋㅋㅋㅋㅋ!!!!!"),
            Some("재밌어요ㅋㅋ!!".into())
        );
        assert_eq!(clean("ㅠㅠㅠㅠ 슬퍼요..... "), Some("ㅠㅠ 슬퍼요..".into()));
        assert_eq!(clean("  최고\t\n 입니다  "), Some("최고 입니다".into()));
        assert_eq!(
            clean("맛집 https://example.com/x?y=1 추천"),
            Some("맛집 추천".into())
        );
        assert_eq!(clean("www.naver.com"), None);
        assert_eq!(clean("좋아요 😀👍🏻 ❤️"), Some("좋아요".into()));
        assert_eq!(clean("   "), None);
        assert_eq!(clean("🎉🎉"), None);
        // Letters repeat freely (only jamo and punctuation are squeezed).
        assert_eq!(clean("아아아아 좋다"), Some("아아아아 좋다".into()));
    }

    #[test]
    fn normalizes_to_nfc() {
        // 한 as decomposed jamo (NFD) becomes the precomposed syllable.
        let decomposed = "\u{1112}\u{1161}\u{11AB}";
        assert_eq!(clean(decomposed), Some("한".into()));
    }

    #[test]
    fn features_match_the_training_script() {
        // What scripts/model/sentiment.py's `buckets` computes for the same text.
        assert_eq!(fnv1a("1:a"), 4995622388189805129);
        let expected = [
            269, 4627, 12979, 15123, 26526, 34370, 40935, 69849, 82658, 88379, 91591, 107100,
            107217, 107918, 117232, 134403, 138242, 140123, 140304, 161088, 164017, 181836, 191740,
            192175, 198249, 200063, 202395, 206166, 206601, 206970, 210884, 233810, 238906, 254371,
        ];
        assert_eq!(
            sentiment_features("재밌어요ㅋㅋ!! 최고", SENTIMENT_BITS),
            expected
        );
    }

    #[test]
    fn ratings_label_the_ends() {
        assert_eq!(Sentiment::from_rating(1), Some(Sentiment::Negative));
        assert_eq!(Sentiment::from_rating(4), Some(Sentiment::Negative));
        assert_eq!(Sentiment::from_rating(5), None);
        assert_eq!(Sentiment::from_rating(8), None);
        assert_eq!(Sentiment::from_rating(9), Some(Sentiment::Positive));
        assert_eq!(Sentiment::from_rating(10), Some(Sentiment::Positive));
    }
}
