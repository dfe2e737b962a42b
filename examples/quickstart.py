"""SSVI in ~30 lines: a 90%-sparse Bayesian MLP on scikit-learn's digits (CPU, ~15 s)."""
import pyro
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_ssvi import SSVI, MaskedAutoNormal, models
from pyro_ssvi.data import DeviceLoader, load_dataset
from pyro_ssvi.metrics import classification_metrics
from pyro_ssvi.predictive import predict

torch.manual_seed(0)
torch.set_num_threads(1)  # a model this small is Python-bound; idle extra threads only spin
pyro.enable_validation(False)  # skip per-step argument checks while training
train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
loader = DeviceLoader(train, batch_size=64, device="cpu", generator=0)
x_test, y_test = next(iter(DeviceLoader(test, batch_size=len(test), device="cpu", shuffle=False)))

model = models.mlp([64, 256, 256, 10], prior_scale=1.0, num_data=len(train))
guide = MaskedAutoNormal(model, sparsity=0.9)  # 10% of each weight matrix is Bayesian, the rest is 0
guide(x_test[:2], y_test[:2])  # set the guide up (observations included) before building the optimizer
optim = torch.optim.SGD([*guide.parameters(), *model.parameters()], lr=0.05, momentum=0.9)
epochs = 30
svi = SSVI(model, guide, optim, TraceMeanField_ELBO(), num_steps=epochs * len(loader),
           update_interval=50, num_data=len(train))  # the loss is per data point
for epoch in range(epochs):
    losses = [svi.step(x, y) for x, y in loader]
    if epoch % 10 == 9:
        print(f"epoch {epoch + 1}: loss {sum(losses) / len(losses):.3f}")

result = predict(model, guide, x_test, num_samples=5)  # softmax averaged over 5 weight draws
metrics = classification_metrics(result.probs, y_test)
print(f"accuracy {metrics['accuracy']:.3f}, NLL {metrics['nll']:.3f}, density {guide.density():.2f}")
