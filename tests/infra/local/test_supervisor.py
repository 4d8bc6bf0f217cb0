import sys
import threading
from pathlib import Path

import pytest

from infra.local.supervisor import Child, Supervisor
from infra.processes import pid_alive
from infra.settings import Settings
from infra.status_files import read_supervisor_state
from tests.helpers.waiting import wait_until


def test_crashed_child_is_restarted_and_stop_ends_everything(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    marker = tmp_path / "runs.txt"
    crasher = f"open({str(marker)!r}, 'a').write('x'); import time; time.sleep(0.3)"
    children = [
        Child("steady", [sys.executable, "-c", "import time; time.sleep(600)"]),
        Child("crasher", [sys.executable, "-c", crasher]),
    ]
    supervisor = Supervisor(settings, children, poll_s=0.1, max_backoff_s=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: marker.exists() and len(marker.read_text()) >= 3, "the crasher's third start")
        state = read_supervisor_state(settings)
        assert state is not None
        by_name = {c["name"]: c for c in state["children"]}
        assert by_name["crasher"]["restarts"] >= 2
        assert by_name["steady"]["restarts"] == 0
        steady_pid = by_name["steady"]["pid"]
        assert steady_pid and pid_alive(steady_pid)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert not pid_alive(steady_pid)
    assert (settings.logs_dir / "steady.log").exists()


def test_up_starts_no_mlflow_server_of_its_own_when_the_tracking_uri_is_a_server(tmp_path) -> None:
    from infra.local.supervisor import default_children
    from infra.settings import Settings

    local = [c.name for c in default_children(Settings(state_dir=tmp_path))]
    remote = [
        c.name for c in default_children(Settings(state_dir=tmp_path, mlflow_tracking_uri="http://127.0.0.1:5999"))
    ]
    assert "mlflow" in local and "mlflow" not in remote
    assert [name for name in local if name != "mlflow"] == remote


def test_up_runs_label_studio_when_it_is_the_labeling_service_with_its_data_in_the_state_folder(
    tmp_path, caplog
) -> None:
    from infra.local.label_studio import label_studio_executable
    from infra.local.stack import StackError
    from infra.local.supervisor import default_children
    from infra.settings import Settings

    chosen = Settings(state_dir=tmp_path, labeling_service="label-studio")
    try:
        label_studio_executable(chosen)
    except StackError:
        pytest.skip("Label Studio is not installed here (make labelstudio)")
    children = {c.name: c for c in default_children(chosen)}
    names = list(children)
    assert names.index("label-studio") < names.index("handler")  # the handler's worker pushes into it
    argv = children["label-studio"].argv
    assert argv[argv.index("--data-dir") + 1] == str(tmp_path / "label-studio")
    assert argv[argv.index("--internal-host") + 1] == "127.0.0.1"
    env = children["label-studio"].env
    assert env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    # The admin's password in its environment, never on the command line (ps shows that to everyone).
    assert env["LABEL_STUDIO_PASSWORD"] == chosen.label_studio_secret()
    assert not any(chosen.label_studio_secret() in arg for arg in argv)

    container = Settings(state_dir=tmp_path, labeling_service="container")
    assert "label-studio" not in [c.name for c in default_children(container)]

    # Wanted but not installed: one line says so, and the rest of the stack still runs.
    missing = chosen.model_copy(update={"label_studio_venv": str(tmp_path / "no-venv")})
    assert [c.name for c in default_children(missing)] == [n for n in names if n != "label-studio"]
    assert any(
        "Label Studio not started" in r.getMessage() and "make labelstudio" in r.getMessage() for r in caplog.records
    )
