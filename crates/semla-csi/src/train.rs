//! A CSI run: DACS self-training of a student on an unlabeled target, its
//! pseudo-labels relabeled by CSI (the weight-free box proposer over the
//! teacher's regions, checked by a concept classifier), or plain DACS.

use candle_core::Device;
use semla_data::SampleSource;
use semla_selftrain::{DacsSettings, DacsStats, PseudoLabelEditor, Student, dacs_train};
use semla_train::trainer::{Progress, Session, TrainConfig, TrainSummary};

use crate::classify::ConceptClassifier;
use crate::config::CsiConfig;
use crate::detect::ComponentBoxes;
use crate::error::Result;
use crate::relabel::{RelabelExample, Relabeler};
use crate::report::CsiReport;

/// What CSI adds to DACS.
pub struct Relabeling<'c> {
    /// The relabeling configuration.
    pub config: CsiConfig,
    /// The classifier (the box proposer scores its crops with it too).
    pub classifier: &'c dyn ConceptClassifier,
}

/// The outcome of [`train`].
pub struct CsiOutcome {
    /// The training loop's summary.
    pub summary: TrainSummary,
    /// What DACS' labelling did.
    pub dacs: DacsStats,
    /// The relabeling's report and its example boxes (with CSI only).
    pub relabeling: Option<(CsiReport, Vec<RelabelExample>)>,
}

/// DACS of `student` from `source` to `target`, with CSI's relabeling when
/// `relabeling` is given (the proposer: [`ComponentBoxes`] with its
/// defaults over the taxonomy's concept strings).
#[allow(clippy::too_many_arguments)]
pub fn train(
    student: Student<'_>,
    device: &Device,
    source: &dyn SampleSource,
    target: &dyn SampleSource,
    relabeling: Option<&Relabeling<'_>>,
    config: &TrainConfig,
    dacs: &DacsSettings,
    session: &Session<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<CsiOutcome> {
    let Some(relabeling) = relabeling else {
        let (summary, dacs) = dacs_train(
            student, device, source, target, None, config, dacs, session, progress,
        )?;
        return Ok(CsiOutcome {
            summary,
            dacs,
            relabeling: None,
        });
    };
    let (vocabulary, _) = relabeling.config.taxonomy.all_concepts();
    let proposer = ComponentBoxes::new(relabeling.classifier, vocabulary);
    let mut relabeler = Relabeler::new(
        relabeling.config.clone(),
        &proposer,
        Some(relabeling.classifier),
    )?;
    let (summary, stats) = dacs_train(
        student,
        device,
        source,
        target,
        Some(&mut relabeler as &mut dyn PseudoLabelEditor),
        config,
        dacs,
        session,
        progress,
    )?;
    let report = CsiReport::new(&relabeler, relabeling.classifier.name(), None);
    Ok(CsiOutcome {
        summary,
        dacs: stats,
        relabeling: Some((report, relabeler.examples().to_vec())),
    })
}
