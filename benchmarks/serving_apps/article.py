"""The seed article's FastAPI app (``seeds/fastapi-model-serving-article.zh.txt``, step 6), as written.

Run as the article says, ``uvicorn main:app`` (one worker; ``--reload`` dropped)::

    BENCH_WEIGHTS=best.pth BENCH_NUM_CLASSES=4 BENCH_THREADS=2 \\
        python -m uvicorn benchmarks.serving_apps.article:app --port 8001

Kept from the article: the model loaded once at startup (``@app.on_event("startup")``) in eval
mode; ``/predict`` reads ``{"input": nested list}`` with ``await request.json()``, converts it
with ``np.array`` then ``torch.tensor(...).float()``, runs one forward pass of batch size 1 under
``torch.no_grad()`` *inside the async handler* (so on the event loop) and answers
``{"prediction": [[...]]}``; ``/predict_batch`` reads ``{"batch_inputs": [...]}``, stacks them and
runs one forward pass in a ``ThreadPoolExecutor(max_workers=4)`` through
``loop.run_in_executor``, answering ``{"results": [[...], ...]}``. The article mentions a result
cache (``functools.lru_cache``) and Prometheus but its complete code has neither: neither is here.

Changed, and only this: the weights are ours (``resnet18`` with our head, from ``BENCH_WEIGHTS``)
instead of ``pretrained=True`` (ImageNet, downloaded), and torch's intra-op threads are set to
``BENCH_THREADS`` (the benchmark's total thread budget) at startup; the article leaves torch's
default (all cores).
"""

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torchvision.models as models
from fastapi import FastAPI, Request

app = FastAPI()
model = None
executor = ThreadPoolExecutor(max_workers=4)  # 限制并发线程数 (the article's limit)


@app.on_event("startup")
async def startup_event():
    global model
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))  # changed: the benchmark's thread budget
    # changed: our trained weights instead of models.resnet18(pretrained=True)
    model = models.resnet18(num_classes=int(os.environ["BENCH_NUM_CLASSES"]))
    model.load_state_dict(torch.load(os.environ["BENCH_WEIGHTS"], map_location="cpu", weights_only=True)["model"])
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")  # 使用GPU加速


def preprocess(input_data):
    # 简化预处理:实际需归一化等
    return torch.tensor(input_data).float()


def batch_inference(inputs):
    inputs_tensor = torch.stack([preprocess(inp) for inp in inputs])
    if torch.cuda.is_available():
        inputs_tensor = inputs_tensor.to("cuda")
    with torch.no_grad():
        outputs = model(inputs_tensor)
    return [torch.softmax(out.cpu(), dim=0).numpy().tolist() for out in outputs]


@app.post("/predict")
async def predict(request: Request):
    data = await request.json()
    input_data = np.array(data["input"])
    processed_data = preprocess(input_data)
    if torch.cuda.is_available():
        processed_data = processed_data.to("cuda")
    with torch.no_grad():
        output = model(processed_data.unsqueeze(0))
    prediction = torch.softmax(output.cpu(), dim=1).numpy().tolist()
    return {"prediction": prediction}


@app.post("/predict_batch")
async def predict_batch(request: Request):
    data = await request.json()
    inputs = [np.array(item) for item in data["batch_inputs"]]
    loop = asyncio.get_event_loop()
    results = await loop.run_in_executor(executor, lambda: batch_inference(inputs))
    return {"results": results}
