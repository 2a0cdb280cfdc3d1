//! The real model (scripts/setup-embed.sh installs it). These tests fail,
//! rather than skip, when the files are missing: CI installs them first.

use std::path::PathBuf;

use plexus_embed::MiniLm;
use plexus_router::Embedder;

fn model() -> MiniLm {
    let dir = std::env::var_os("PLEXUS_EMBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.models/minilm"));
    MiniLm::load(&dir).unwrap_or_else(|e| panic!("the embedding model is needed: {e}"))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn vectors_are_unit_length_and_do_not_depend_on_the_batch() {
    let m = model();
    assert_eq!(m.dim(), 384);
    let texts = [
        "turn off the kitchen lights at 11pm",
        "Plan the next sprint using our team's velocity and capacity in Jira, then open the tickets",
        "",
    ];
    let batch = m.embed(&texts).unwrap();
    assert_eq!(batch.len(), 3);
    for (t, v) in texts.iter().zip(&batch) {
        assert_eq!(v.len(), 384);
        assert!((dot(v, v) - 1.0).abs() < 1e-4, "{t:?}");
        // Alone (no padding) and in a padded batch: the same vector.
        let one = m.embed(&[t]).unwrap().remove(0);
        assert!(dot(v, &one) > 0.9999, "{t:?}: {}", dot(v, &one));
    }
}

#[test]
fn everyday_words_land_near_the_documents_they_mean() {
    let m = model();
    let v = m
        .embed(&[
            "the sprinkler in the back garden should skip watering when it rained",
            "Home Assistant automation: trigger devices from sensors, weather and schedules",
            "Jira sprint planning from team velocity and capacity",
            "React component library: forms, themes and accessibility",
        ])
        .unwrap();
    let home = dot(&v[0], &v[1]);
    assert!(home > dot(&v[0], &v[2]) + 0.1, "{home}");
    assert!(home > dot(&v[0], &v[3]) + 0.1, "{home}");
}
