"""Checks shared by the per-family tests."""

from .conftest import noise_image

SIZES = [(160, 120), (90, 200), (300, 300)]  # different aspect ratios and sizes
QUESTIONS = ["What is on the table?", "Is there a red circle?", "Describe the photo in detail."]


def assert_batch_equals_one_by_one(engine, budget_sets, *, sizes=SIZES, new_tokens=8):
    """Each budget set runs as one batch of differently sized images; every row equals its image alone."""
    images = [noise_image(10 + i, size) for i, size in enumerate(sizes)]
    for budgets in budget_sets:
        batch = engine.run(images, QUESTIONS, tokens=budgets, max_new_tokens=new_tokens)
        for image, question, k, got in zip(images, QUESTIONS, budgets, batch):
            alone = engine.ask(image, question, tokens=k, max_new_tokens=new_tokens)
            assert got.kept_indices == alone.kept_indices and got.vision_kept == min(k, got.vision_total)
            assert got.output_ids == alone.output_ids
            assert got.prompt_pruned == alone.prompt_pruned
        assert len({row.prompt_unpruned for row in batch}) > 1  # the rows really were padded
