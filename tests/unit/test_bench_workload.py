"""What `python -m bench` sends and reads: distinct prompts and images, vLLM log parsing, endpoints."""
from bench.engines import error_from_log
from bench.engines.vllm_engine import normalize_endpoint, worker_threads
from bench.memory import vllm_weights_gib
from bench.workload import default_image, make_prompts, marked, scenarios

VLLM_LOG = """\
(APIServer pid=1) WARNING 11-23 19:34:46 [system_utils.py:255] ... like `OSError: [Errno 24] Too many open files`
(EngineCore pid=2) INFO 11-23 18:12:22 [ompmultiprocessing.py:185] \tlocal_rank=0, core ids=[0, 1]
(Worker pid=3) ERROR 11-23 19:35:21 [multiproc_executor.py:1063] AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'
(EngineCore pid=2) ERROR 11-23 19:35:21 [core.py:1512] RuntimeError: Worker failed with error 'x', please check
(APIServer pid=1) ERROR 11-23 19:35:21 [serving.py:929] vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.
(Worker pid=3) INFO 11-23 19:35:21 [gpu_model_runner.py:5150] Model loading took 15.62 GiB memory and 12.3 seconds
"""


def test_log_parsing():
    assert error_from_log(VLLM_LOG) == "AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'"
    assert error_from_log("all fine\n") is None
    assert worker_threads(VLLM_LOG) == 2 and worker_threads("") is None
    assert vllm_weights_gib(VLLM_LOG) == 15.62 and vllm_weights_gib("") is None


def test_normalize_endpoint():
    assert normalize_endpoint("127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_endpoint("http://h:1/v1/") == "http://h:1/v1"
    assert normalize_endpoint("https://h/") == "https://h/v1"


def test_prompts_are_distinct_and_sized():
    class WordTok:  # a whitespace "tokenizer": exact lengths are checkable without a model
        def __call__(self, text, add_special_tokens=False, verbose=False):
            return {"input_ids": text.split()}

        def decode(self, ids):
            return " ".join(ids)

    ps = make_prompts(12, 20, WordTok(), seed=7)
    assert len(set(ps)) == 12 and all(len(p.split()) == 20 for p in ps)
    assert make_prompts(12, 20, WordTok(), seed=7) == ps and make_prompts(12, 20, WordTok(), seed=8) != ps
    assert len(set(make_prompts(5, 16))) == 5  # no tokenizer: word-count approximation


def test_images_are_distinct_but_alike():
    img = default_image()
    a, b = marked(img, 1), marked(img, 2)
    assert a.size == img.size and a.tobytes() != b.tobytes() != img.tobytes()
    diff = sum(x != y for x, y in zip(a.tobytes(), img.tobytes()))
    assert diff < 0.01 * len(img.tobytes())  # a corner mark, not another picture
    sc = scenarios("vl", 4, 16, 8, None, img)
    assert [s.name for s in sc] == ["text", "image"]
    assert len({r.image.tobytes() for r in sc[1].requests}) == 4 and all(r.image is None for r in sc[0].requests)
    assert [s.name for s in scenarios("text", 4, 16, 8)] == ["text"]


def test_fit_pixels_resizes_as_the_processor_would():
    """serve.chat --max-image-pixels resizes a picture to a budget before sending it (a smaller upload): vLLM's
    processor then sees the same patch grid as from the original, so the answer's image tokens do not change."""
    from transformers import Qwen2VLImageProcessor

    from serve.client import fit_pixels

    proc = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                 size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256})
    for img in (default_image(), default_image().resize((1000, 300)), default_image().resize((96, 64))):
        fitted = fit_pixels(img, 256 * 256)
        w, h = fitted.size
        assert w % 32 == 0 and h % 32 == 0 and w * h <= 256 * 256
        grid = proc(images=[img], return_tensors="pt")["image_grid_thw"].tolist()
        assert proc(images=[fitted], return_tensors="pt")["image_grid_thw"].tolist() == grid
        assert grid[0][1] * 16 == h and grid[0][2] * 16 == w  # the grid *is* the fitted picture
    assert fit_pixels(default_image(), 256 * 256).size == (256, 256)
    small = default_image().resize((96, 64))
    assert fit_pixels(small, 256 * 256) is small  # already a processor size: sent as it is
