//! Property tests: LoRA configs survive YAML / TOML round trips; overrides parse exactly.

use proptest::prelude::*;
use tracknet_config::*;

fn target_modules() -> impl Strategy<Value = TargetModules> {
    prop_oneof![
        Just(TargetModules::Auto),
        prop::collection::vec("[a-z][a-z0-9_]{0,11}", 1..6).prop_map(TargetModules::List),
        prop::collection::vec("[a-z][a-z0-9_]{0,7}", 1..4)
            .prop_map(|names| TargetModules::Regex(format!(r".*\.({})", names.join("|")))),
    ]
}

prop_compose! {
    fn lora_config()(
        enabled in any::<bool>(),
        r in 1usize..=1024,
        lora_alpha in 1e-3f64..1e4,
        lora_dropout in 0.0f64..=1.0,
        target_modules in target_modules(),
        bias in prop::sample::select(LoraBias::VARIANTS),
        task_type in prop::option::of("[A-Z][A-Z_]{0,20}"),
        use_rslora in any::<bool>(),
        modules_to_save in prop::collection::vec("[a-z][a-z0-9_.]{0,15}", 0..3),
        init_lora_weights in any::<bool>(),
        adapter_path in prop::option::of("[a-z][a-z0-9_/]{0,12}"),
    ) -> LoraConfig {
        LoraConfig {
            enabled,
            r,
            lora_alpha,
            lora_dropout,
            target_modules,
            bias: bias.parse().unwrap(),
            task_type,
            use_rslora,
            modules_to_save,
            init_lora_weights,
            // Only valid with LoRA on (validated on load).
            adapter_path: adapter_path.filter(|_| enabled).map(std::path::PathBuf::from),
        }
    }
}

proptest! {
    #[test]
    fn lora_round_trips(lora in lora_config()) {
        let mut cfg = RunConfig::default();
        cfg.model.lora = lora;
        prop_assert_eq!(&RunConfig::from_yaml_str(&cfg.to_yaml_string()).unwrap(), &cfg);
        prop_assert_eq!(&RunConfig::from_toml_str(&cfg.to_toml_string()).unwrap(), &cfg);
        prop_assert_eq!(&RunConfig::from_value(cfg.to_value()).unwrap(), &cfg);
    }

    #[test]
    fn numeric_overrides_are_exact(lr in 1e-12f64..10.0, r in 1usize..100_000, seed in any::<u64>()) {
        let base = RunConfig::default();
        let cfg = base
            .with_overrides(&[
                format!("training.optimizer.lr={lr:e}"),
                format!("model.lora.r={r}"),
                format!("training.seed={seed}"),
            ])
            .unwrap();
        prop_assert_eq!(cfg.training.optimizer.lr, lr);
        prop_assert_eq!(cfg.model.lora.r, r);
        prop_assert_eq!(cfg.training.seed, seed);
        let cfg = base.with_overrides(&[format!("training.optimizer.lr={lr}")]).unwrap();
        prop_assert_eq!(cfg.training.optimizer.lr, lr);
    }

    #[test]
    fn list_overrides(games in prop::collection::vec("game[0-9]{1,3}", 1..8)) {
        let text = format!("data.split.val_games=[{}]", games.join(", "));
        let cfg = RunConfig::default().with_overrides(&[text]).unwrap();
        prop_assert_eq!(cfg.data.split.val_games, games);
    }

    #[test]
    fn unknown_keys_never_load(key in "[a-z_]{1,12}") {
        let known = RunConfig::default().to_value();
        prop_assume!(known["model"]["lora"].get(&key).is_none());
        let e = RunConfig::default().with_overrides(&[format!("model.lora.{key}=1")]).unwrap_err();
        let path = format!("model.lora.{key}");
        prop_assert!(e.issues().iter().any(|i| i.path == path));
    }
}
