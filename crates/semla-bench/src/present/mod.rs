//! Presentation, in one place: the results table as terminal text
//! ([`text`]) and Markdown ([`markdown`]), PNG bar charts drawn without a font
//! library ([`chart`]), and the self-contained HTML report of the demo
//! ([`report`]).

pub mod chart;
pub mod markdown;
pub mod report;
pub mod text;
