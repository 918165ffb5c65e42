# A shrunken UPerNet for CPU runs: mmseg's R18 ADE20K config with 64 decoder channels, random
# backbone initialisation and plain BatchNorm (one process).
_base_ = 'mmseg::upernet/upernet_r18_4xb4-80k_ade20k-512x512.py'
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size, test_cfg=dict(size_divisor=32)),
    pretrained=None,
    backbone=dict(init_cfg=None, norm_cfg=norm_cfg),
    decode_head=dict(channels=64, norm_cfg=norm_cfg),
    auxiliary_head=dict(channels=32, norm_cfg=norm_cfg))
