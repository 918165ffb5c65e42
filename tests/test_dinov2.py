"""DINOv2 with the release's linear classifier, against an independent forward pass."""
import pytest
import torch

from classification_bikd import DinoV2LinearMember


def member(layers, **kw):
    torch.manual_seed(0)
    return DinoV2LinearMember(pretrained=False, layers=layers, model_kwargs=dict(depth=5),
                              input_size=(56, 56), **kw).eval()


def manual_tokens(m, images):
    """Every block's output, layer-normed, computed block by block from timm's modules."""
    vit = m.model
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(m.normalize(images))))
    outs = []
    for blk in vit.blocks:
        x = blk(x)
        outs.append(vit.norm(x))
    return outs


@pytest.mark.parametrize('layers', [1, 4])
def test_linear_head_input_is_class_tokens_and_mean_patch(layers):
    m = member(layers)
    images = torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8)
    outs = manual_tokens(m, images)
    feats = torch.cat([o[:, 0] for o in outs[-layers:]] + [outs[-1][:, 1:].mean(1)], dim=1)
    with torch.no_grad():
        assert torch.allclose(m.logits(images), m.head(feats), atol=1e-5)
    assert m.head.in_features == (1 + layers) * 384 and m.num_classes == 1000


def test_head_urls_follow_the_release():
    assert member(4).head_url().endswith('dinov2_vits14/dinov2_vits14_linear4_head.pth')
    assert member(1).head_url().endswith('dinov2_vits14/dinov2_vits14_linear_head.pth')


def test_export_reloads(tmp_path):
    m = member(4)
    info = m.export(str(tmp_path), 'dinov2')
    again = DinoV2LinearMember(layers=4, model_kwargs=dict(depth=5), input_size=(56, 56),
                               checkpoint=str(tmp_path / info['checkpoint']),
                               head_file=str(tmp_path / info['head'])).eval()
    again.take_weights()
    images = torch.randint(0, 256, (2, 3, 56, 56), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(m.logits(images), again.logits(images))
    assert set(torch.load(tmp_path / info['head'])) == {'weight', 'bias'}


def test_backbone_without_head_is_refused(tmp_path):
    m = member(4)
    info = m.export(str(tmp_path), 'dinov2')
    with pytest.raises(ValueError, match='head_file'):
        DinoV2LinearMember(model_kwargs=dict(depth=5), input_size=(56, 56),
                           checkpoint=str(tmp_path / info['checkpoint'])).take_weights()
