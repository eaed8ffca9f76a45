import pytest

from attnvgg_export.models.card import card_markdown, model_card


def test_se_card_matches_the_published_parameter_figures():
    card = model_card("se", 224)
    assert card.extra_parameters == 76_288
    assert [b.parameters for b in card.blocks] == [512, 2048, 8192, 32768, 32768]
    assert all(v.endswith("matches") for v in card.verdicts)
    assert card.macs["total"] == pytest.approx(15.47e9, rel=1e-3)


def test_la_card_reports_its_disagreement_with_the_published_figures():
    card = model_card("la", 224)
    assert card.parameters == 139_734_040
    assert card.macs["attention"] == pytest.approx(2.184e9, rel=1e-3)
    assert any("139.2 M" in v and "differs" in v for v in card.verdicts)
    assert any("16.1 GFLOPs" in v and "differs" in v for v in card.verdicts)


def test_la_macs_grow_linearly_and_sa_quadratically_with_tokens():
    la = [model_card("la", s).macs["attention"] for s in (64, 128)]
    sa = [model_card("sa", s).macs["attention"] for s in (64, 128)]
    assert la[1] / la[0] == pytest.approx(4, rel=0.01)
    assert sa[1] / sa[0] > 12


def test_card_markdown_has_the_table_and_blocks():
    text = card_markdown(model_card("sa", 32, num_classes=10, width=0.25))
    assert "| parameters |" in text and "SoftmaxAttention" in text
