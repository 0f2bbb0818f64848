"""Darknet cfg parsing (parity.cfg, parity.config) against darknet's own rules.

Expected values are worked out by hand from darknet's parser (read_cfg,
read_option, option_find, parse_yolo, parse_yolo_mask, the make_*_layer size
formulas); the comment on each test says how. Real cfgs live in
fixtures/cfg (see SOURCES.md); their grids were also checked against
AlexeyAB's parse_network_cfg_custom.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from parity.cfg import NetworkCfg, c_atof, c_atoi, dump_yolo_cfg, load_cfg, parse_cfg, yolo_config_from_cfg
from parity.config import FLT_MAX, ConfigWarning, YoloConfig
from parity.errors import ConfigError, DarknetInputWarning

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cfg"
NET = "[net]\nwidth=416\nheight=416\n"


def yolo(*lines: str, net: str = NET, flavor: str = "alexeyab") -> YoloConfig:
    """Parse [net] + one [yolo] with ``lines``, without warnings."""
    text = net + "[yolo]\n" + "".join(line + "\n" for line in lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return yolo_config_from_cfg(text, path="t.cfg", flavor=flavor)


def config_error(text: str, flavor: str = "alexeyab") -> ConfigError:
    """The ConfigError parsing ``text`` as t.cfg raises (warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError) as info:
            parse_cfg(text, path="t.cfg", flavor=flavor)
    return info.value


def assert_names(err: ConfigError, line: int | None, option: str | None) -> None:
    """The message names the file, the line and the option (the brief's contract)."""
    message = str(err)
    assert "t.cfg" in message
    assert err.line == line
    if line is not None:
        assert f"line {line}" in message
    assert err.option == option
    if option is not None:
        assert f"'{option}'" in message


# -- defaults -------------------------------------------------------------


def test_empty_alexeyab_yolo_gets_alexeyab_parse_yolo_defaults() -> None:
    # parse_yolo: classes 20, num 1, mask 0..num-1, max 200, iou_normalizer .75,
    # max_delta FLT_MAX, ...; make_yolo_layer sets every bias to .5.
    c = yolo()
    assert c == YoloConfig(net_w=416, net_h=416, batch=1)
    assert (c.classes, c.num, c.mask, c.anchors, c.max_boxes) == (20, 1, (0,), (0.5, 0.5), 200)
    assert (c.iou_normalizer, c.max_delta, c.iou_loss) == (0.75, FLT_MAX, "mse")
    assert c.flavor == "alexeyab"


def test_empty_pjreddie_yolo_gets_max_90_and_pinned_alexeyab_fields() -> None:
    # pjreddie's parse_yolo: max defaults to 90; it reads no normalizers, so
    # those fields keep YoloConfig's defaults (documented as ignored).
    c = yolo(flavor="pjreddie")
    assert c.max_boxes == 90 and c.flavor == "pjreddie"
    assert c == YoloConfig.for_flavor("pjreddie")
    assert c.iou_normalizer == 0.75 and c.iou_loss == "mse"


def test_absent_mask_selects_every_anchor_and_absent_anchors_stay_half() -> None:
    # num=3 without mask: make_yolo_layer fills mask with 0,1,2; biases .5.
    c = yolo("num=3", "classes=1")
    assert c.mask == (0, 1, 2) and c.n == 3
    assert c.anchors == (0.5,) * 6


def test_layer_batch_is_batch_divided_by_subdivisions() -> None:
    # parse_net_options: net->batch /= subdivisions -> 64/8 = 8.
    c = yolo(net="[net]\nwidth=608\nheight=320\nbatch=64\nsubdivisions=8\n")
    assert (c.batch, c.net_w, c.net_h) == (8, 608, 320)


def test_alexeyab_raises_an_empty_mini_batch_to_one_with_a_warning() -> None:
    # 2/4 = 0 in C; AlexeyAB then sets net.batch = 1.
    text = "[net]\nwidth=32\nheight=32\nbatch=2\nsubdivisions=4\n[yolo]\n"
    with pytest.warns(ConfigWarning, match="line 5"):
        c = yolo_config_from_cfg(text, path="t.cfg")
    assert c.batch == 1


def test_pjreddie_refuses_an_empty_mini_batch() -> None:
    # pjreddie has no clamp: its layers would get batch 0.
    err = config_error("[net]\nwidth=32\nheight=32\nbatch=2\nsubdivisions=4\n[yolo]\n", "pjreddie")
    assert_names(err, 5, "subdivisions")


def test_options_outside_the_loss_go_to_extra_verbatim() -> None:
    # jitter, random, nms_kind, beta_nms are read by parse_yolo but do not
    # change the training forward pass.
    c = yolo("jitter=.3", "random=1", "nms_kind=greedynms", "beta_nms=0.6", "classes=2")
    assert dict(c.extra) == {"jitter": ".3", "random": "1", "nms_kind": "greedynms",
                             "beta_nms": "0.6"}
    assert c == yolo("classes=2")  # extra does not take part in equality


def test_pjreddie_keeps_alexeyab_only_options_in_extra_and_warns() -> None:
    # pjreddie's parse_yolo never reads iou_normalizer / iou_loss ("Unused field").
    text = NET + "[yolo]\niou_normalizer=0.07\niou_loss=ciou\n"
    with pytest.warns(ConfigWarning) as caught:
        c = yolo_config_from_cfg(text, path="t.cfg", flavor="pjreddie")
    assert [str(w.message).split(" in [yolo]")[0] for w in caught] == [
        "t.cfg:line 5: option 'iou_normalizer'", "t.cfg:line 6: option 'iou_loss'"]
    assert c.iou_normalizer == 0.75 and c.iou_loss == "mse"
    assert dict(c.extra) == {"iou_normalizer": "0.07", "iou_loss": "ciou"}


def test_unknown_yolo_option_warns_with_file_line_and_option() -> None:
    # darknet only prints "Unused field"; so do we, as a warning.
    text = NET + "[yolo]\nclasses=2\nuc_normalizer=0.07\n"
    with pytest.warns(ConfigWarning, match=r"t\.cfg:line 6: option 'uc_normalizer'"):
        c = yolo_config_from_cfg(text, path="t.cfg")
    assert c.classes == 2 and c.extra["uc_normalizer"] == "0.07"


# -- text: whitespace, comments, lines -----------------------------------


def test_spaces_tabs_and_cr_are_removed_anywhere_in_a_line() -> None:
    # strip() deletes ' ', '\t', '\r', '\n' wherever they are: "cla sses" is "classes".
    text = "[ net ]\r\nwidth = 4 16\r\nheight=416\r\n[\tyolo ]\r\ncla sses = 8 0 \t\r\n"
    c = yolo_config_from_cfg(text, path="t.cfg")
    assert (c.classes, c.net_w) == (80, 416)


def test_comment_and_blank_lines_are_skipped() -> None:
    # Lines whose first non-blank char is '#' or ';' are comments.
    text = ("# header\n[net]\n  ; width=1\nwidth=64\n\n   \nheight=64\n"
            "[yolo]\n#classes=5\nclasses=3\n")
    assert yolo_config_from_cfg(text).classes == 3


def test_inline_comment_after_a_number_is_ignored_by_atoi() -> None:
    # "80 # coco" strips to "80#coco"; atoi stops at '#'.
    assert yolo("classes=80 # coco").classes == 80


def test_inline_comment_after_a_string_option_reads_as_darknet_reads_it() -> None:
    # "ciou #best" strips to "ciou#best"; darknet's strcmp fails -> plain IOU.
    with pytest.warns(DarknetInputWarning, match="line 5: option 'iou_loss': darknet reads 'ciou#best' as plain IoU"):
        c = yolo_config_from_cfg(NET + "[yolo]\niou_loss = ciou  # best\n", path="t.cfg")
    assert c.iou_loss == "iou"


def test_a_lone_cr_does_not_end_a_line() -> None:
    # fgetl splits on LF only; the CR is then stripped, so this is one
    # line "classes=3num=2": atoi reads 3 and num stays 1.
    c = yolo("classes=3\rnum=2")
    assert (c.classes, c.num) == (3, 1)


def test_first_of_repeated_options_wins_and_the_rest_warn() -> None:
    # option_find returns the first matching key in file order.
    text = NET + "[yolo]\nclasses=3\nclasses=7\n"
    with pytest.warns(ConfigWarning, match=r"line 6: option 'classes' repeated.*line 5"):
        c = yolo_config_from_cfg(text, path="t.cfg")
    assert c.classes == 3


def test_pjreddie_warns_about_carriage_returns() -> None:
    # pjreddie's strip() keeps '\r', so "[net]\r" would not be recognised.
    with pytest.warns(ConfigWarning, match="line 1.*carriage return"):
        parse_cfg("[net]\r\nwidth=8\nheight=8\n[yolo]\n", path="t.cfg", flavor="pjreddie")


@pytest.mark.parametrize("text, line, option, fragment", [
    # no '=': darknet stores the key with a NULL value
    (NET + "[yolo]\nclasses\n", 5, "classes", "no '='"),
    # '=' last: read_option's i == len-1 -> "Config file error line 5"
    (NET + "[yolo]\nclasses =  \n", 5, "classes", "nothing after '='"),
    (NET + "[yolo]\n=5\n", 5, None, "no option name"),
    # an option line before any section: darknet dereferences a NULL section
    ("width=416\n[net]\n", 1, None, "before any [section]"),
    ("\ufeff[net]\nwidth=8\n", 1, None, "byte-order mark"),
    ("[yolo]\n[net]\n", 1, None, "requires [net] or [network] first"),
    ("[net]#x\nwidth=8\n", 1, None, "requires [net]"),
])
def test_malformed_lines_name_file_and_line(text: str, line: int, option: str | None,
                                            fragment: str) -> None:
    err = config_error(text)
    assert_names(err, line, option)
    assert fragment in str(err)


def test_a_cfg_without_sections_is_refused() -> None:
    err = config_error("# nothing\n\n")
    assert "t.cfg" in str(err) and "no sections" in str(err)


def test_network_header_is_accepted_like_net() -> None:
    # string_to_layer_type maps both [net] and [network] to NETWORK.
    cfg = parse_cfg("[network]\nwidth=8\nheight=8\n[yolo]\n")
    assert cfg.width == 8 and len(cfg.yolo_layers) == 1


# -- numbers ----------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("80", 80), ("80#coco", 80), ("8.9", 8), ("+7", 7), ("-3x", -3), ("\v12", 12),
    ("0x10", 0), ("abc", None), ("", None), ("-", None),
])
def test_c_atoi_reads_the_leading_integer(text: str, expected: int | None) -> None:
    # strtol base 10: optional sign then digits; "0x10" is the integer 0.
    assert c_atoi(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("0.5abc", 0.5), (".5", 0.5), ("5.", 5.0), ("1e-1x", 0.1), ("1e", 1.0), ("-2E+2", -200.0),
    ("0x1p-1", 0.5), ("0x.8", 0.5), ("0x", 0.0), ("inf", math.inf), ("-Infinity", -math.inf),
    ("abc", None), ("e5", None), (".", None),
])
def test_c_atof_reads_the_leading_number(text: str, expected: float | None) -> None:
    # strtod: decimal with optional exponent (needs digits), hex with p-exponent, inf.
    assert c_atof(text) == expected


def test_c_atof_reads_nan_as_nan() -> None:
    assert math.isnan(c_atof("nan(0x1)"))


def test_numbers_keep_atoi_atof_prefix_semantics() -> None:
    # "0.5abc" -> atof 0.5; "3.9" -> atoi 3.
    c = yolo("ignore_thresh=0.5abc", "classes=3.9")
    assert (c.ignore_thresh, c.classes) == (0.5, 3)


@pytest.mark.parametrize("line, option", [
    ("classes=abc", "classes"),        # atoi would give 0 silently
    ("ignore_thresh=high", "ignore_thresh"),
    ("jitter=x", "jitter"),            # also for options kept in extra
    ("classes=99999999999", "classes"),
    ("iou_normalizer=nan", "iou_normalizer"),
    ("scale_x_y=inf", "scale_x_y"),
])
def test_numeric_option_without_a_usable_number_is_refused(line: str, option: str) -> None:
    err = config_error(NET + "[yolo]\n" + line + "\n")
    assert_names(err, 5, option)


def test_infinite_max_delta_is_accepted() -> None:
    # max_delta only clips; an infinite bound is the same as FLT_MAX's "no clip".
    assert yolo("max_delta=inf").max_delta == math.inf


# -- lists ----------------------------------------------------------------------


def test_alexeyab_list_counting_stops_at_hash_but_pjreddie_does_not() -> None:
    # AlexeyAB counts commas only before '#': 3 items. pjreddie counts all
    # 3 commas -> 4 items: atoi("0"), atoi("1"), atoi("2#"), atoi("5").
    line = "mask=0,1,2#,5"
    assert yolo("num=6", "classes=1", line).mask == (0, 1, 2)
    assert yolo("num=6", "classes=1", line, flavor="pjreddie").mask == (0, 1, 2, 5)


def test_trailing_comma_adds_a_zero_item_with_a_warning() -> None:
    # "1,2," has 2 commas -> 3 items; the last is atoi("") = 0.
    text = NET + "[yolo]\nnum=3\nmask=1,2,\n"
    with pytest.warns(ConfigWarning, match=r"line 6: option 'mask'.*reads it as 0"):
        c = yolo_config_from_cfg(text, path="t.cfg")
    assert c.mask == (1, 2, 0)


def test_spaces_between_list_items_are_removed() -> None:
    c = yolo("num=2", "anchors = 10,13,  16,30")
    assert c.anchors == (10.0, 13.0, 16.0, 30.0)


def test_a_missing_comma_merges_two_anchors_and_darknet_leaves_the_last_at_half() -> None:
    # "13  16" strips to "1316": 3 values for num=2, which needs 4; darknet trains with biases[3] = .5.
    with pytest.warns(DarknetInputWarning, match=r"line 6: option 'anchors': 3 anchor values for num=2; "
                                                 r"darknet reads them and leaves the other 1 at 0.5"):
        c = yolo_config_from_cfg(NET + "[yolo]\nnum=2\nanchors=10,13  16,30\n")
    assert c.anchors == (10.0, 1316.0, 30.0, 0.5)


def test_alexeyab_reads_only_two_anchors_per_num() -> None:
    # parse_yolo stops at total*2 values: the extra "7,8" is ignored.
    with pytest.warns(ConfigWarning, match="reads only the first 2"):
        c = yolo_config_from_cfg(NET + "[yolo]\nanchors=5,6,7,8\n")
    assert c.anchors == (5.0, 6.0)


def test_pjreddie_extra_anchors_would_overflow_and_are_refused() -> None:
    # pjreddie writes every listed value into biases[total*2].
    err = config_error(NET + "[yolo]\nanchors=5,6,7,8\n", "pjreddie")
    assert_names(err, 5, "anchors")
    assert "overflow" in str(err)


def test_counters_per_class_are_parsed_and_turned_into_multipliers() -> None:
    # max counter 100: multipliers 100/50 = 2, 100/100 = 1, counter 0 counts as 1 -> 100.
    c = yolo("classes=3", "counters_per_class=50, 100, 0")
    assert c.counters_per_class == (50, 100, 0)
    assert list(c.classes_multipliers()) == [2.0, 1.0, 100.0]


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize("lines, line, option, fragment", [
    (["num=3", "mask=1,3"], 6, "mask", "mask index 3"),
    (["num=3", "mask=-1"], 6, "mask", "mask index -1"),
    (["classes=3", "counters_per_class=1,2"], 6, "counters_per_class", "classes=3"),
    (["classes=0"], 5, "classes", "at least one class"),
    (["num=0"], 5, "num", "at least one anchor"),
    (["max=0"], 5, "max", "no truth boxes"),
    (["truth_thresh=-0.1"], 5, "truth_thresh", ">= 0"),
    (["max_delta=-1"], 5, "max_delta", ">= 0"),
    (["anchors=10,0"], 5, "anchors", "positive"),
    (["classes=2", "anchors=10,abc"], 6, "anchors", "positive"),  # "abc" reads as 0
])
def test_invalid_yolo_options_name_file_line_and_option(lines: list[str], line: int,
                                                        option: str, fragment: str) -> None:
    err = config_error(NET + "[yolo]\n" + "".join(f"{x}\n" for x in lines))
    assert_names(err, line, option)
    assert fragment in str(err)


def test_absent_anchors_are_not_an_error() -> None:
    # darknet leaves every bias at .5 when anchors= is missing.
    assert yolo("num=2").anchors == (0.5, 0.5, 0.5, 0.5)


def test_pjreddie_refuses_more_than_90_truth_boxes() -> None:
    # l.truths = 90*(4+1): max=91 would read the next image's first truth.
    err = config_error(NET + "[yolo]\nmax=91\n", "pjreddie")
    assert_names(err, 5, "max")
    assert yolo("max=90", flavor="pjreddie").max_boxes == 90


@pytest.mark.parametrize("net, line, option", [
    ("[net]\nheight=416\n", 2, "width"),              # width absent: default 0 (line of [net])
    ("[net]\nwidth=0\nheight=416\n", 3, "width"),
    ("[net]\nwidth=416\nheight=-416\n", 4, "height"),
    ("[net]\nwidth=416\nheight=416\nbatch=0\n", 5, "batch"),
    ("[net]\nwidth=416\nheight=416\nsubdivisions=0\n", 5, "subdivisions"),  # darknet divides by 0
])
def test_bad_net_sizes_name_file_line_and_option(net: str, line: int, option: str) -> None:
    err = config_error("\n" + net + "[yolo]\n")
    assert_names(err, line, option)


def test_conv_filters_must_match_the_following_yolo() -> None:
    # n=3, classes=80 -> the conv must output 3*(5+80) = 255 channels.
    text = (NET + "channels=3\n[convolutional]\nsize=1\nfilters=256\n"
            "[yolo]\nmask=0,1,2\nnum=3\nclasses=80\n")
    err = config_error(text)
    assert_names(err, 7, "filters")
    assert "[convolutional] at line 5 has filters=256" in str(err)
    assert "3*(5+80) = 255" in str(err)


def test_channel_mismatch_after_a_route_names_the_route() -> None:
    # The route passes layer 0's 16 channels; the [yolo] needs 1*(5+1) = 6.
    text = (NET + "channels=3\n[convolutional]\nfilters=16\n[route]\nlayers=-1\n"
            "[yolo]\nclasses=1\n")
    err = config_error(text)
    assert_names(err, 7, None)
    assert "[route] at line 7 outputs 16 channels" in str(err)


def test_exactly_one_yolo_is_required_for_a_yolo_config() -> None:
    # the second [yolo] sees the first one's 416x416x6 output: 1*(5+1) channels
    text = NET + "channels=6\n[yolo]\nclasses=1\n[yolo]\nclasses=1\n"
    expected = r"t\.cfg:line 7: expected exactly one \[yolo\] section, found 2"
    with pytest.raises(ConfigError, match=expected):
        yolo_config_from_cfg(text, path="t.cfg")
    with pytest.raises(ConfigError, match="found 0"):
        yolo_config_from_cfg(NET, path="t.cfg")


def test_unknown_flavor_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown flavor 'darknet'"):
        parse_cfg(NET, flavor="darknet")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read cfg"):
        load_cfg(tmp_path / "absent.cfg")


# -- YoloConfig invariants ------------------------------------------------------------


def test_yolo_config_validates_on_construction_and_replace() -> None:
    with pytest.raises(ConfigError, match="option 'mask'"):
        YoloConfig(num=2, mask=(2,), anchors=(1.0,) * 4)
    with pytest.raises(ConfigError, match="option 'iou_loss'"):
        YoloConfig().replace(iou_loss="eiou")


def test_pjreddie_config_needs_max_90_and_default_alexeyab_fields() -> None:
    # An unset max takes the flavor's default (pjreddie holds 90 truths, AlexeyAB 200);
    # an explicit max above 90 is refused for pjreddie.
    assert YoloConfig(flavor="pjreddie").max_boxes == 90
    assert YoloConfig().max_boxes == 200
    with pytest.raises(ConfigError, match="option 'max'"):
        YoloConfig(flavor="pjreddie", max_boxes=200)
    with pytest.raises(ConfigError, match="option 'iou_normalizer'.*does not read"):
        YoloConfig.for_flavor("pjreddie", iou_normalizer=1.0)


def test_yolo_config_turns_lists_into_tuples() -> None:
    c = YoloConfig(num=2, mask=[1], anchors=[1, 2, 3, 4])
    assert c.mask == (1,) and c.anchors == (1, 2, 3, 4)


# -- layer walk -------------------------------------------------------------------------

REAL_GRIDS = [
    # (fixture, flavor, [yolo] layer indices, grids) -- also what AlexeyAB's
    # parse_network_cfg_custom reports for these files.
    ("yolov4.cfg", "alexeyab", [139, 150, 161], [76, 38, 19]),          # 608 / 8, 16, 32
    ("yolov3-tiny.cfg", "alexeyab", [16, 23], [13, 26]),                # 416 / 32, 16
    ("yolov4-tiny.cfg", "alexeyab", [30, 37], [13, 26]),
    ("yolov4-csp.cfg", "alexeyab", [144, 159, 174], [64, 32, 16]),      # 512 / 8, 16, 32
    ("yolov7-tiny.cfg", "alexeyab", [90, 94, 98], [52, 26, 13]),        # 416 / 8, 16, 32
    ("yolov3-pjreddie.cfg", "pjreddie", [82, 94, 106], [19, 38, 76]),   # 608 / 32, 16, 8
]


@pytest.mark.parametrize("name, flavor, indices, grids", REAL_GRIDS, ids=[g[0] for g in REAL_GRIDS])
def test_real_cfgs_give_darknets_yolo_grids(name: str, flavor: str, indices: list[int],
                                            grids: list[int]) -> None:
    cfg = load_cfg(FIXTURES / name, flavor=flavor)
    assert [y.index for y in cfg.yolo_layers] == indices
    assert [(y.grid_w, y.grid_h) for y in cfg.yolo_layers] == [(g, g) for g in grids]
    assert all(y.config.flavor == flavor for y in cfg.yolo_layers)


def test_yolov4_layers_hold_its_loss_options() -> None:
    # yolov4.cfg: batch 64 / subdivisions 8; first [yolo] at line 965 uses
    # mask 0,1,2 of 9 anchors, ciou with iou_normalizer .07, scale_x_y 1.2.
    cfg = load_cfg(FIXTURES / "yolov4.cfg")
    first = cfg.yolo_layers[0]
    assert (cfg.width, cfg.height, cfg.channels, cfg.batch) == (608, 608, 3, 8)
    assert first.line == 965
    c = first.config
    assert (c.classes, c.num, c.mask, c.iou_loss) == (80, 9, (0, 1, 2), "ciou")
    assert (c.iou_normalizer, c.cls_normalizer, c.scale_x_y, c.max_delta) == (0.07, 1.0, 1.2, 5.0)
    assert c.anchors[:4] == (12.0, 16.0, 19.0, 36.0) and len(c.anchors) == 18
    assert c.extra["nms_kind"] == "greedynms"


def test_yolov4_csp_uses_new_coords() -> None:
    c = load_cfg(FIXTURES / "yolov4-csp.cfg").yolo_layers[0].config
    assert (c.new_coords, c.scale_x_y, c.obj_normalizer, c.iou_thresh) == (1, 2.0, 4.0, 0.2)


def test_pjreddie_yolov3_reads_only_pjreddie_options() -> None:
    c = load_cfg(FIXTURES / "yolov3-pjreddie.cfg", flavor="pjreddie").yolo_layers[0].config
    assert (c.max_boxes, c.ignore_thresh, c.mask) == (90, 0.7, (6, 7, 8))
    assert dict(c.extra) == {"jitter": ".3", "random": "1"}


def test_upstream_cfg_with_a_mask_past_num_is_refused() -> None:
    # cspx-p7-mish.cfg line 2583: mask 16..19 with num=16 -- darknet reads
    # biases[32..39] past its 32-float array.
    err = config_error((FIXTURES / "cspx-p7-mish.cfg").read_text())
    assert (err.line, err.option) == (2583, "mask")
    assert "mask index 16" in str(err)


def test_upstream_cfg_with_a_missing_comma_is_read_as_darknet_reads_it() -> None:
    # cspx-p7-mish_hp.cfg line 2351: "61,45    61,45" reads as 61, 4561, 45,
    # so darknet shifts every later anchor and leaves the last at .5 -- and trains.
    with pytest.warns(DarknetInputWarning, match="line 2351: option 'anchors': 31 anchor values for num=16"):
        net = parse_cfg((FIXTURES / "cspx-p7-mish_hp.cfg").read_text(), path="t.cfg")
    read = [layer.config for layer in net.yolo_layers if 4561.0 in layer.config.anchors]
    assert read and all(c.anchors[-1] == 0.5 and len(c.anchors) == 32 for c in read)


def walk(body: str, classes: int = 1) -> NetworkCfg:
    """[net] 64x32x3, ``body``, then a 1-anchor [yolo]; grids of that [yolo]."""
    text = "[net]\nwidth=64\nheight=32\nchannels=3\n" + body + f"\n[yolo]\nclasses={classes}\n"
    return parse_cfg(text, path="t.cfg")


def grid(body: str) -> tuple[int | None, int | None]:
    y = walk(body).yolo_layers[0]
    return y.grid_w, y.grid_h


@pytest.mark.parametrize("body, expected", [
    # conv: (x + 2*pad - size)/stride + 1 with pad = size/2 -> (64+2-3)/2+1 = 32, (32+2-3)/2+1 = 16
    ("[convolutional]\nsize=3\nstride=2\npad=1\nfilters=6", (32, 16)),
    # stride_x/stride_y: (64-1)/4+1 = 16 wide, (32-1)/1+1 = 32 high
    ("[conv]\nsize=1\nstride_x=4\nstride_y=1\nfilters=6", (16, 32)),
    # dilation is ignored by AlexeyAB's size formula: (64+2*1-3)/1+1 = 64
    ("[convolutional]\nsize=3\npad=1\ndilation=2\nfilters=6", (64, 32)),
    # C division truncates: (64 - 5)/2 + 1 = 30, (32 - 5)/2 + 1 = 14
    ("[convolutional]\nsize=5\nstride=2\nfilters=6", (30, 14)),
    # ... towards zero: (32 - 64)/64 is 0 in C (floor would give -1), so height 1
    ("[convolutional]\nsize=64\nstride=64\nfilters=6", (1, 1)),
    # maxpool padding defaults to size-1: (64+1-2)/2+1 = 32, (32+1-2)/2+1 = 16
    ("[maxpool]\nsize=2\nstride=2\n[conv]\nfilters=6", (32, 16)),
    # stride-1 maxpool keeps the size: (64+1-2)/1+1 = 64
    ("[max]\nsize=2\nstride=1\n[conv]\nfilters=6", (64, 32)),
    # upsample doubles; a negative stride divides
    ("[upsample]\nstride=2\n[conv]\nfilters=6", (128, 64)),
    ("[upsample]\nstride=-4\n[conv]\nfilters=6", (16, 8)),
    # reorg3d stride 2 halves w, h and multiplies c by 4: 3 -> 12
    ("[reorg3d]\nstride=2\n[conv]\nfilters=6", (32, 16)),
    # avgpool and connected are 1x1
    ("[avgpool]\n[conv]\nfilters=6", (1, 1)),
    ("[connected]\noutput=6", (1, 1)),
    # antialiasing: host conv at stride 1, then a 3x3 pad 1 blur with stride 2:
    # (64+2-3)/2+1 = 32, (32+2-3)/2+1 = 16
    ("[convolutional]\nsize=1\nstride=2\nantialiasing=1\nfilters=6", (32, 16)),
    # shortcut, dropout, activation, batchnorm pass the size through
    ("[convolutional]\nfilters=6\n[shortcut]\nfrom=-1\n[dropout]\n[batchnorm]\n[activation]",
     (64, 32)),
])
def test_walk_sizes_layers_like_alexeyab(body: str, expected: tuple[int, int]) -> None:
    assert grid(body) == expected


def test_route_concatenates_channels_and_groups_split_them() -> None:
    # layer 0: 64x32x4, layer 1: 64x32x8; route 0,1 -> 12 channels; groups=2 -> 6.
    body = ("[convolutional]\nfilters=4\n[convolutional]\nfilters=8\n"
            "[route]\nlayers=-2,1\ngroups=2\ngroup_id=1")
    assert grid(body) == (64, 32)  # and the [yolo] channel check (6) passed


def test_route_reads_a_layers_own_output_not_its_blurred_one() -> None:
    # With antialiasing, darknet feeds the next layer the blurred 32x16 map but
    # l.out_w/h (what [route] reads) stay at the stride-1 64x32.
    body = "[convolutional]\nstride=2\nantialiasing=1\nfilters=6\n[route]\nlayers=-1"
    assert grid(body) == (64, 32)


def test_yolo_with_no_layer_before_it_has_no_grid() -> None:
    cfg = parse_cfg(NET + "[yolo]\n")
    assert (cfg.yolo_layers[0].grid_w, cfg.yolo_layers[0].grid_h) == (None, None)
    assert cfg.yolo_layers[0].index == 0


def test_sections_keep_net_first_and_layer_indices_skip_it() -> None:
    cfg = walk("[convolutional]\nfilters=6")
    assert [s.type for s in cfg.sections] == ["net", "convolutional", "yolo"]
    assert [s.line for s in cfg.sections] == [1, 5, 7]
    assert cfg.sections[1].find("filters").value == "6"
    assert cfg.yolo_layers[0].index == 1 and cfg.yolo_layers[0].line == 7


@pytest.mark.parametrize("body, line, option, fragment", [
    # softmax gives no width/height in darknet
    ("[softmax]\n[conv]\nfilters=6", 5, None, "[softmax] output no width/height"),
    # route inputs of different sizes: darknet zeroes the route's output
    ("[conv]\nfilters=3\n[maxpool]\nsize=2\nstride=2\n[route]\nlayers=0,1", 11, "layers",
     "differ in size"),
    ("[route]\nlayers=-3", 6, "layers", "names layer -3"),
    ("[conv]\nfilters=6\n[route]\nlayers=-1\ngroups=0", 9, "groups", "groups=0"),
    ("[yolov9]\n[conv]\nfilters=6", 5, None, "does not recognise"),
    ("[conv]\nsize=5\nstride=0\nfilters=6", 7, "stride", "stride 0"),
])
def test_unsizable_layer_is_an_error_only_under_a_yolo(body: str, line: int,
                                                       option: str | None, fragment: str) -> None:
    err = config_error("[net]\nwidth=64\nheight=32\nchannels=3\n" + body + "\n[yolo]\nclasses=1\n")
    assert_names(err, line, option)
    assert fragment in str(err)


def test_unsizable_layer_after_the_last_yolo_is_fine() -> None:
    # A [softmax] or unknown section no [yolo] depends on does not stop parsing.
    with pytest.warns(ConfigWarning, match="line 9.*does not recognise"):
        cfg = parse_cfg("[net]\nwidth=64\nheight=32\nchannels=3\n[conv]\nfilters=6\n"
                        "[yolo]\nclasses=1\n[mystery]\n[softmax]\n", path="t.cfg")
    assert (cfg.yolo_layers[0].grid_w, cfg.yolo_layers[0].grid_h) == (64, 32)


# -- writing ------------------------------------------------------------------------------


def test_dump_of_a_default_config_has_no_yolo_options() -> None:
    assert dump_yolo_cfg(YoloConfig()).splitlines()[1:] == [
        "[net]", "width=416", "height=416", "batch=1", "", "[yolo]"]


def test_dump_writes_num_and_non_default_options_in_darknet_syntax() -> None:
    c = YoloConfig(classes=2, num=3, mask=(1, 2), anchors=(10.0, 13.0, 16.5, 30.0, 33.0, 23.0),
                   iou_loss="ciou", max_delta=FLT_MAX, counters_per_class=(5, 0),
                   extra={"jitter": ".3"})
    yolo_lines = dump_yolo_cfg(c).split("[yolo]\n")[1].splitlines()
    assert yolo_lines == ["classes=2", "num=3", "mask=1,2", "counters_per_class=5,0",
                          "iou_loss=ciou", "anchors=10,13,16.5,30,33,23", "jitter=.3"]


def test_dump_refuses_extra_that_would_not_read_back() -> None:
    with pytest.raises(ConfigError, match="option 'classes'"):
        dump_yolo_cfg(YoloConfig(extra={"classes": "3"}))
    with pytest.raises(ConfigError, match="not a number"):
        dump_yolo_cfg(YoloConfig(extra={"jitter": "abc"}))
    with pytest.raises(ConfigError, match="cannot be written"):
        dump_yolo_cfg(YoloConfig(extra={"nms_kind": "a b"}))


def test_dump_round_trips_every_real_yolo_layer() -> None:
    for name, flavor, _, _ in REAL_GRIDS:
        for layer in load_cfg(FIXTURES / name, flavor=flavor).yolo_layers:
            text = dump_yolo_cfg(layer.config)
            back = yolo_config_from_cfg(text, flavor=flavor)
            assert back == layer.config and dict(back.extra) == dict(layer.config.extra)


def _config_strategy(st: Any, flavor: str) -> Any:
    """Any valid YoloConfig of ``flavor``, with extras darknet reads."""
    finite = st.floats(allow_nan=False, allow_infinity=False)
    int32 = st.integers(-(2 ** 31), 2 ** 31 - 1)
    positive = st.floats(min_value=0.0, exclude_min=True, allow_infinity=False)

    @st.composite
    def configs(draw: Any) -> YoloConfig:
        classes, num = draw(st.integers(1, 40)), draw(st.integers(1, 12))
        values = dict(
            classes=classes, num=num, flavor=flavor,
            mask=tuple(draw(st.lists(st.integers(0, num - 1), min_size=1, max_size=num))),
            anchors=tuple(draw(st.lists(positive, min_size=2 * num, max_size=2 * num))),
            max_boxes=draw(st.integers(1, 90 if flavor == "pjreddie" else 10_000)),
            ignore_thresh=draw(finite), truth_thresh=draw(st.floats(0, 1e300)),
            net_w=draw(st.integers(1, 4096)), net_h=draw(st.integers(1, 4096)),
            batch=draw(st.integers(1, 256)),
            extra={k: draw(st.sampled_from(v)) for k, v in (("jitter", ["0", ".3", "2.5"]),
                                                           ("random", ["0", "1"]))
                   if draw(st.booleans())},
        )
        if flavor == "alexeyab":
            values.update(
                iou_thresh=draw(finite),
                iou_thresh_kind=draw(st.sampled_from(["iou", "giou", "diou", "ciou"])),
                iou_loss=draw(st.sampled_from(["mse", "iou", "giou", "diou", "ciou"])),
                iou_normalizer=draw(finite), obj_normalizer=draw(finite),
                cls_normalizer=draw(finite), delta_normalizer=draw(finite),
                scale_x_y=draw(finite), label_smooth_eps=draw(finite),
                new_coords=draw(int32), objectness_smooth=draw(int32), focal_loss=draw(int32),
                show_details=draw(int32),
                max_delta=draw(st.one_of(st.just(FLT_MAX), st.just(math.inf),
                                         st.floats(0, 1e30))),
                counters_per_class=draw(st.one_of(
                    st.none(), st.lists(int32, min_size=classes, max_size=classes).map(tuple))),
            )
        return YoloConfig(**values)

    return configs()


@pytest.mark.parametrize("flavor", ["alexeyab", "pjreddie"])
def test_dump_round_trips_any_config(flavor: str) -> None:
    # dump writes every non-default field; parsing it back must give an equal
    # config (and the same extra), with no warning on the way.
    hypothesis = pytest.importorskip("hypothesis")

    @hypothesis.settings(max_examples=200, deadline=None)
    @hypothesis.given(_config_strategy(hypothesis.strategies, flavor))
    def check(config: YoloConfig) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            back = yolo_config_from_cfg(dump_yolo_cfg(config), flavor=flavor)
        assert back == config
        assert dict(back.extra) == dict(config.extra)

    check()


def test_warnings_name_file_and_line() -> None:
    # Every ConfigWarning starts with "<file>:line <n>".
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parse_cfg(NET + "[yolo]\nclasses=2\nclasses=3\nfoo=1\n", path="t.cfg")
    assert len(caught) == 2
    assert all(re.match(r"t\.cfg:line \d+: ", str(w.message)) for w in caught)


# -- values darknet accepts silently (issue 11, point 2) ---------------------------------


@pytest.mark.parametrize("line, field, message", [
    ("iou_loss=CIoU", "iou_loss", "line 5: option 'iou_loss': darknet reads 'CIoU' as plain IoU loss: write 'ciou'"),
    ("iou_loss=foo", "iou_loss", "line 5: option 'iou_loss': darknet reads 'foo' as plain IoU loss (expected one of"),
    ("iou_thresh_kind=cIoU", "iou_thresh_kind",
     "line 5: option 'iou_thresh_kind': darknet reads 'cIoU' as plain IoU for iou_thresh: write 'ciou'"),
    ("iou_thresh_kind=eiou", "iou_thresh_kind", "darknet reads 'eiou' as plain IoU for iou_thresh (expected"),
])
def test_a_value_darknet_compares_case_sensitively_reads_as_iou_with_a_warning(line, field, message) -> None:
    with pytest.warns(DarknetInputWarning) as caught:
        c = yolo_config_from_cfg(NET + "[yolo]\n" + line + "\n", path="t.cfg")
    assert getattr(c, field) == "iou"
    texts = [str(w.message) for w in caught]
    assert any(t.startswith("t.cfg:") and message in t for t in texts), texts


@pytest.mark.parametrize("value", ["mse", "giou", "diou", "ciou"])
def test_the_exact_names_read_silently(value) -> None:
    assert yolo(f"iou_loss={value}").iou_loss == value


# -- map= (issue 11, point 1) -------------------------------------------------------------


def _map_cfg(tmp_path: Path, lines: str, classes: int = 3) -> Path:
    (tmp_path / "maps").mkdir(exist_ok=True)
    (tmp_path / "maps" / "m.map").write_text(lines)
    cfg = tmp_path / "t.cfg"
    cfg.write_text(NET + f"[yolo]\nclasses={classes}\nmap=maps/m.map\n")
    return cfg


def test_map_is_read_relative_to_the_cfg_one_atoi_per_line(tmp_path: Path) -> None:
    cfg = _map_cfg(tmp_path, "2\n0\n1\n7\n")        # lines past classes are never indexed
    c = load_cfg(cfg).yolo_layers[0].config
    assert c.class_map == (2, 0, 1, 7)


@pytest.mark.parametrize("lines, fragment", [
    ("2\n3\n0\n", "line 2: map value 3 is outside [0, 3)"),
    ("-1\n0\n1\n", "line 1: map value -1 is outside [0, 3)"),
    ("0\n1\n", "has 2 lines for classes=3"),
])
def test_a_map_darknet_would_index_out_of_bounds_is_refused_naming_file_and_line(tmp_path, lines, fragment):
    cfg = _map_cfg(tmp_path, lines)
    with pytest.raises(ConfigError) as err:
        load_cfg(cfg)
    assert "m.map" in str(err.value) and fragment in str(err.value), str(err.value)
    assert err.value.option == "map"


def test_a_missing_map_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "t.cfg"
    cfg.write_text(NET + "[yolo]\nmap=nowhere.map\n")
    with pytest.raises(ConfigError, match="cannot read map file"):
        load_cfg(cfg)
