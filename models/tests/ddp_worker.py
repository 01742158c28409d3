"""Run under torchrun by test_recipe.Distributed: trains TempCNN on the synthetic set as
one rank of a DistributedDataParallel training and writes what the test compares — this
rank's weights digest, its history and its test accuracy — to OUT/rank-<r>.json."""

import hashlib
import json
import os
import sys

import torch

from sitsflow_models.train import TrainConfig, train

from tests import synthetic


def main(out: str) -> None:
    torch.set_num_threads(1)
    cube, targets, groups = synthetic.make(60, seed=1)
    test_cube, test_targets, _ = synthetic.make(40, seed=2)
    config = TrainConfig(arch="tempcnn", seed=0, epochs=15, batch_size=32, patience=5,
                         hyperparameters={"filters": 16, "dense": 32})
    result = train(cube, targets, groups, ["B0", "B1", "B2"], 3, config)
    digest = hashlib.sha256()
    for name, tensor in result.classifier.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    with torch.no_grad():
        predicted = result.classifier(torch.from_numpy(test_cube)).argmax(1).numpy()
    rank = int(os.environ["RANK"])
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
        json.dump({"world_size": result.world_size, "weights": digest.hexdigest(), "epochs": len(result.history),
                   "accuracy": float((predicted == test_targets).mean())}, f)


if __name__ == "__main__":
    main(sys.argv[1])
