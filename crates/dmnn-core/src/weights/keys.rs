//! The key rules between torchvision's ResNet state dict and dmnn's module tree, both ways.
//!
//! | torchvision (and dmnn exports) | dmnn module path |
//! |---|---|
//! | `conv1.*`, `bn1.*`, `fc.*` | the same |
//! | `layer{s}.{b}.{conv,bn}{k}.*` | `layers.{s-1}.{b}.paths.0.{conv,bn}{k}.*` |
//! | `layer{s}.{b}.paths.{i}.{conv,bn}{k}.*` (exports of multi-path models) | `layers.{s-1}.{b}.paths.{i}.{conv,bn}{k}.*` |
//! | `layer{s}.{b}.downsample.0.*` / `.1.*` | `layers.{s-1}.{b}.downsample.conv.*` / `.bn.*` |
//! | `controller.*` (`controller.gru.*` / `.lstm.*` of older exports) | `controller.*` (`controller.recurrent.*`) |
//! | batch norm `weight` / `bias` | `gamma` / `beta` |
//! | `*.num_batches_tracked` | dropped (written back as 0 on export) |
//!
//! dmnn's side is the module tree without enum variants (burn-store's `skip_enum_variants`): a
//! path is `paths.{i}.conv1`, whether it is a `Path::Basic` or a `Path::Bottleneck`.

/// What a torchvision key becomes in dmnn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMapping {
    /// The dmnn key.
    To(String),
    /// A buffer dmnn does not keep (`num_batches_tracked`).
    Dropped,
    /// No rule applies.
    Unknown,
}

fn bn_param(p: &str) -> Option<&str> {
    match p {
        "weight" => Some("gamma"),
        "bias" => Some("beta"),
        "running_mean" | "running_var" => Some(p),
        _ => None,
    }
}

fn bn_param_back(p: &str) -> &str {
    match p {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    }
}

fn is_path_module(m: &str) -> bool {
    matches!(m, "conv1" | "conv2" | "conv3" | "bn1" | "bn2" | "bn3")
}

/// Translates a torchvision ResNet state-dict key (or a dmnn export's) into the dmnn module path
/// (see the module docs).
pub fn torchvision_to_dmnn(key: &str) -> KeyMapping {
    let parts: Vec<&str> = key.split('.').collect();
    let last = *parts.last().unwrap_or(&"");
    if last == "num_batches_tracked" {
        return KeyMapping::Dropped;
    }
    let norm = |module: &str, param: &str, prefix: String| -> KeyMapping {
        let is_bn = module.starts_with("bn") || module == "downsample.bn";
        if is_bn {
            match bn_param(param) {
                Some(p) => KeyMapping::To(format!("{prefix}{module}.{p}")),
                None => KeyMapping::Unknown,
            }
        } else if param == "weight" || param == "bias" {
            KeyMapping::To(format!("{prefix}{module}.{param}"))
        } else {
            KeyMapping::Unknown
        }
    };
    match parts.as_slice() {
        ["conv1", "weight"] => KeyMapping::To(key.to_string()),
        ["bn1", p] => norm("bn1", p, String::new()),
        ["fc", p @ ("weight" | "bias")] => KeyMapping::To(format!("fc.{p}")),
        ["controller", "blocks", l, "embed_norm", p] => match bn_param(p) {
            Some(p) => KeyMapping::To(format!("controller.blocks.{l}.embed_norm.{p}")),
            None => KeyMapping::Unknown,
        },
        ["controller", "gru" | "lstm", rest @ ..] => KeyMapping::To(format!("controller.recurrent.{}", rest.join("."))),
        ["controller", ..] => KeyMapping::To(key.to_string()),
        [layer, block, rest @ ..] if layer.starts_with("layer") => {
            let (Ok(stage), Ok(block)) = (layer["layer".len()..].parse::<usize>(), block.parse::<usize>()) else {
                return KeyMapping::Unknown;
            };
            if stage == 0 {
                return KeyMapping::Unknown;
            }
            let base = format!("layers.{}.{block}.", stage - 1);
            match rest {
                ["downsample", "0", "weight"] => KeyMapping::To(format!("{base}downsample.conv.weight")),
                ["downsample", "1", p] => norm("downsample.bn", p, base),
                ["paths", path, m, p] if path.parse::<usize>().is_ok() && is_path_module(m) => {
                    norm(m, p, format!("{base}paths.{path}."))
                }
                [m, p] if is_path_module(m) => norm(m, p, format!("{base}paths.0.")),
                _ => KeyMapping::Unknown,
            }
        }
        _ => KeyMapping::Unknown,
    }
}

/// Translates a dmnn module path into the exported (torchvision) key; `single_path` models drop
/// the `paths.0` level as torchvision has none.
pub fn dmnn_to_torchvision(key: &str, single_path: bool) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        ["bn1", p] => format!("bn1.{}", bn_param_back(p)),
        ["layers", stage, block, rest @ ..] => {
            let stage = stage.parse::<usize>().map(|s| s + 1).unwrap_or(0);
            let base = format!("layer{stage}.{block}");
            match rest {
                ["downsample", "conv", p] => format!("{base}.downsample.0.{p}"),
                ["downsample", "bn", p] => format!("{base}.downsample.1.{}", bn_param_back(p)),
                ["paths", path, m, p] => {
                    let p = if m.starts_with("bn") { bn_param_back(p) } else { p };
                    if single_path && *path == "0" {
                        format!("{base}.{m}.{p}")
                    } else {
                        format!("{base}.paths.{path}.{m}.{p}")
                    }
                }
                _ => key.to_string(),
            }
        }
        _ => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_go_both_ways() {
        for (tv, ours, single) in [
            ("layer1.0.conv1.weight", "layers.0.0.paths.0.conv1.weight", true),
            ("layer2.1.bn2.weight", "layers.1.1.paths.0.bn2.gamma", true),
            ("layer3.0.downsample.1.bias", "layers.2.0.downsample.bn.beta", true),
            ("layer3.0.downsample.0.weight", "layers.2.0.downsample.conv.weight", true),
            ("layer1.1.paths.1.conv3.weight", "layers.0.1.paths.1.conv3.weight", false),
            (
                "controller.recurrent.update_gate.input_transform.weight",
                "controller.recurrent.update_gate.input_transform.weight",
                false,
            ),
            ("bn1.running_var", "bn1.running_var", true),
        ] {
            assert_eq!(torchvision_to_dmnn(tv), KeyMapping::To(ours.into()), "{tv}");
            assert_eq!(dmnn_to_torchvision(ours, single), tv, "{ours}");
        }
        // exports written before the recurrent cell became one field
        for old in
            ["controller.gru.reset_gate.hidden_transform.bias", "controller.lstm.reset_gate.hidden_transform.bias"]
        {
            assert_eq!(
                torchvision_to_dmnn(old),
                KeyMapping::To("controller.recurrent.reset_gate.hidden_transform.bias".into())
            );
        }
        assert_eq!(
            torchvision_to_dmnn("controller.blocks.2.embed_norm.weight"),
            KeyMapping::To("controller.blocks.2.embed_norm.gamma".into())
        );
        assert_eq!(torchvision_to_dmnn("layer1.0.bn1.num_batches_tracked"), KeyMapping::Dropped);
        assert_eq!(torchvision_to_dmnn("layer0.0.conv1.weight"), KeyMapping::Unknown);
        assert_eq!(torchvision_to_dmnn("layer1.0.conv9.weight"), KeyMapping::Unknown);
    }
}
