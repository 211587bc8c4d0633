//! Full-size memory/time split: decoder alone or backbone alone (arg: dec|bb), batch 2.
use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::Instant;
use tracknet_vit::decoder::HeatmapDecoderConfig;
use tracknet_vit::head::HeatmapHeadConfig;
type A = Autodiff<NdArray>;
fn main() {
    let d = Default::default();
    let what = std::env::args().nth(1).unwrap();
    let layers: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(12);
    if what == "dec" {
        let dec = HeatmapDecoderConfig::new(vec![384, 256, 128, 64], vec![2, 2, 2], [256, 144])
            .init::<A>(&d)
            .unwrap();
        let head = HeatmapHeadConfig::new(64).init::<A>(&d);
        let x = Tensor::<A, 4>::random([2, 384, 18, 32], Distribution::Normal(0., 1.), &d)
            .require_grad();
        let t = Instant::now();
        let l = head.forward(dec.forward(x)).sum();
        let t1 = t.elapsed();
        let _g = l.backward();
        println!("decoder fwd {:?} total {:?}", t1, t.elapsed());
    } else {
        let cfg = format!(
            r#"{{"model_type":"dinov3_vit","hidden_size":384,"num_hidden_layers":{layers},"num_attention_heads":6,"intermediate_size":1536,"num_register_tokens":4,"patch_size":16}}"#
        );
        let arch =
            tracknet_vit::backbone::BackboneArch::from_config_str(&cfg, std::path::Path::new("x"))
                .unwrap();
        let bb = tracknet_vit::backbone::Backbone::<A>::random(&arch, &d).unwrap();
        let x = Tensor::<A, 4>::random([2, 3, 288, 512], Distribution::Normal(0., 1.), &d)
            .require_grad();
        let t = Instant::now();
        let l = bb.forward(x).patch_grid.sum();
        let t1 = t.elapsed();
        let _g = l.backward();
        println!("backbone({layers}) fwd {:?} total {:?}", t1, t.elapsed());
    }
}
