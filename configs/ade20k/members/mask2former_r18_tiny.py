# A shrunken Mask2Former for CPU runs: mmseg's R50 ADE20K config with a ResNet-18 backbone,
# 64 channels, 20 queries, 3 decoder layers and 2 pixel-decoder layers. Same head, same
# criterion (Hungarian matching, 5 BCE + 5 Dice, class weight 2 / 0.1 no-object, auxiliary losses).
_base_ = 'mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py'
crop_size = (128, 128)
model = dict(
    data_preprocessor=dict(size=crop_size, test_cfg=dict(size_divisor=32)),
    backbone=dict(depth=18, init_cfg=None, norm_cfg=dict(type='BN', requires_grad=True)),
    decode_head=dict(
        in_channels=[64, 128, 256, 512],
        feat_channels=64,
        out_channels=64,
        num_queries=20,
        pixel_decoder=dict(
            num_outs=3,
            encoder=dict(num_layers=2, layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=64, num_heads=4),
                ffn_cfg=dict(embed_dims=64, feedforward_channels=128))),
            positional_encoding=dict(num_feats=32)),
        positional_encoding=dict(num_feats=32),
        transformer_decoder=dict(num_layers=3, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=64, num_heads=4),
            cross_attn_cfg=dict(embed_dims=64, num_heads=4),
            ffn_cfg=dict(embed_dims=64, feedforward_channels=128))),
        train_cfg=dict(num_points=1024)))
