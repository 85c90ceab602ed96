"""The Celery configuration that long GPU jobs rely on."""
from __future__ import annotations

from app.settings import Settings
from app.jobs import make_celery


def test_routes_and_reliability_settings(tmp_path):
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0", run_hard_time_limit=1000)
    app = make_celery(settings)
    route = lambda name: app.amqp.router.route({}, name)["queue"]  # noqa: E731
    for task, queue in (("worker.tasks.adapt_run", "gpu"), ("worker.tasks.sample_gallery", "gpu"),
                        ("worker.tasks.build_pack", "cpu")):
        q = route(task)
        # its own exchange and key, so that a message reaches exactly one queue
        assert (q.name, q.exchange.name, q.routing_key) == (queue, queue, queue)
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["visibility_timeout"] > settings.run_hard_time_limit


def test_task_time_limits_and_acks():
    import worker.tasks as tasks

    run = tasks.adapt_run
    assert run.acks_late and run.reject_on_worker_lost
    assert run.soft_time_limit < run.time_limit
    assert tasks.build_pack.acks_late and tasks.sample_gallery.acks_late
