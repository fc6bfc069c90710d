from matplotlib.collections import LineCollection

from pipeline.evaluation.plots import headline_figure, plot_retrieval, plot_tasks, tasks_figure


def test_headline_plot_shows_each_models_scores_and_intervals(task_metrics, tmp_path):
    fig = headline_figure(task_metrics)  # no retrieval task: the verdict's task is BLI, its primary metric P@1
    [ax] = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["yor", "average"], "skipped kha is not drawn"
    assert "P@1" in ax.get_title() and [t.get_text() for t in ax.get_legend().get_texts()] == ["base", "trained"]
    assert [round(b.get_height(), 3) for b in ax.patches] == [0.2, 0.2, 0.3, 0.3]  # base yor, avg; trained yor, avg
    intervals = [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    assert sorted((round(s[0][1], 3), round(s[1][1], 3)) for s in intervals) == [(0.1, 0.3)] * 2 + [(0.2, 0.4)] * 2
    plot_retrieval(task_metrics, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tasks_plot_shows_each_metrics_average_with_its_interval(task_metrics, tmp_path):
    [ax] = tasks_figure(task_metrics).axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["P@1", "P@5"]
    assert "Bilingual lexicon induction" in ax.get_title() and "1 languages" in ax.get_title()
    assert [round(b.get_height(), 3) for b in ax.patches] == [0.2, 0.4, 0.3, 0.5]  # base P@1, P@5; trained P@1, P@5
    intervals = sorted((round(s[0][1], 3), round(s[1][1], 3)) for c in ax.collections if isinstance(c, LineCollection)
                       for s in c.get_segments())
    assert intervals == [(0.1, 0.3), (0.2, 0.4)], "P@1 has an interval per model, P@5 (no interval) none"
    path = tmp_path / "t.png"
    plot_tasks(task_metrics, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
