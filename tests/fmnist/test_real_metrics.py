"""Real FID / LPIPS code paths: clear errors without weight files, and correct loading of files
in the published layouts (random weights written here stand in for the real files)."""

import pytest
import torch

from worker.domainstudio import real_metrics as rm


def test_missing_files_name_what_is_needed(monkeypatch):
    for env in (rm.FID_WEIGHTS_ENV, rm.ALEXNET_WEIGHTS_ENV, rm.LPIPS_LINEAR_ENV):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        rm.fid(torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32))
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        rm.load_lpips_alex()
    with pytest.raises(FileNotFoundError, match=rm.ALEXNET_WEIGHTS_ENV):
        rm.load_lpips_alex("/nonexistent/alexnet.pth", "/nonexistent/alex.pth")


def test_inception_loads_pytorch_fid_layout(tmp_path):
    state = rm.FIDInception().state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # as in the file
    torch.save(state, tmp_path / "inception.pth")
    net = rm.load_fid_inception(tmp_path / "inception.pth")
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    feats = rm.inception_features(net, x)
    assert feats.shape == (3, 2048)

    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="Mixed_7c"):
        rm.load_fid_inception(tmp_path / "broken.pth")


def _lpips_files(tmp_path):
    net = rm.AlexLPIPS()
    alex = {f"features.{k}": v for k, v in net.features.state_dict().items()}
    alex["classifier.1.weight"] = torch.zeros(4096, 9216)  # torchvision's file holds the head too
    torch.save(alex, tmp_path / "alexnet.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(net.CHANNELS)},
               tmp_path / "alex.pth")
    return tmp_path / "alexnet.pth", tmp_path / "alex.pth"


def test_lpips_matrix_matches_pairwise_forward_and_intra_lpips_of_copies_is_zero(tmp_path):
    net = rm.load_lpips_alex(*_lpips_files(tmp_path))
    a, b = torch.rand(3, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    matrix = rm.lpips_matrix(net, a, b)
    direct = torch.stack([net(a[i:i + 1].expand(2, -1, -1, -1), b) for i in range(3)])
    torch.testing.assert_close(matrix.float(), direct, rtol=1e-4, atol=1e-5)
    out = rm.intra_lpips(b.repeat(3, 1, 1, 1), b, net)
    assert out["cluster_sizes"] == [3, 3] and out["intra_lpips"] == pytest.approx(0, abs=1e-6)
