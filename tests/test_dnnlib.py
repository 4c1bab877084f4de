"""dnnlib.util: open_url (local HTTP server, cache, sha256, offline), dotted-name lookup, helpers."""

import copy
import hashlib
import os
import pickle
import socket
import sys
import time

import pytest

import dnnlib
from dnnlib import util
from local_http import LocalServer

#----------------------------------------------------------------------------
# Downloads, against a real HTTP server on 127.0.0.1 (tests/local_http.py).

BODY = b'network bytes ' * 100

@pytest.fixture
def server():
    with LocalServer({'/weights/model.pkl': BODY}) as srv:
        yield srv

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def test_first_attempt_downloads_with_a_progress_line(server, tmp_path, capsys):
    # One attempt must be enough (the detectors make one): the first try used to fail always.
    url = server.url('/weights/model.pkl')
    with util.open_url(url, cache_dir=str(tmp_path), num_attempts=1) as f:
        assert f.read() == BODY
    err = capsys.readouterr().err
    assert f'Downloading {url}' in err
    assert f'Downloaded {url}: 0.00 MiB' in err
    assert server.requests == ['/weights/model.pkl']

def test_download_then_cache_hit(server, tmp_path, capsys):
    url = server.url('/weights/model.pkl')
    with util.open_url(url, cache_dir=str(tmp_path), verbose=False) as f:
        assert f.read() == BODY
    assert server.requests == ['/weights/model.pkl']
    cached = os.listdir(tmp_path)
    assert cached == [os.path.basename(util.cache_path_for_url(url, str(tmp_path)))]
    assert cached[0].endswith('_model.pkl')
    assert os.stat(tmp_path / cached[0]).st_mode & 0o044 == 0o044 # readable like any download

    # Second call: served from the cache, the server sees no new request and nothing is printed.
    fname = util.open_url(url, cache_dir=str(tmp_path), return_filename=True)
    assert os.path.dirname(fname) == str(tmp_path)
    with open(fname, 'rb') as f:
        assert f.read() == BODY
    assert len(server.requests) == 1
    assert capsys.readouterr().err == ''

    # cache=False downloads again and leaves nothing new behind.
    with util.open_url(url, cache_dir=str(tmp_path), verbose=False, cache=False) as f:
        assert f.read() == BODY
    assert len(server.requests) == 2
    assert len(os.listdir(tmp_path)) == 1

def test_cache_dir_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'envcache'))
    assert util.make_cache_dir_path('downloads') == str(tmp_path / 'envcache' / 'downloads')
    assert dnnlib.make_cache_dir_path('x') == str(tmp_path / 'envcache' / 'x')
    fname = util.open_url(server.url('/weights/model.pkl'), verbose=False, return_filename=True)
    assert fname.startswith(str(tmp_path / 'envcache' / 'downloads'))

def test_wrong_hash_is_refused_and_not_cached(server, tmp_path):
    url = server.url('/weights/model.pkl')
    good = hashlib.sha256(BODY).hexdigest()
    bad = '0' * 64
    with util.open_url(url, cache_dir=str(tmp_path), verbose=False, sha256=good) as f:
        assert f.read() == BODY
    with pytest.raises(IOError) as info:
        util.open_url(url, cache_dir=str(tmp_path / 'other'), verbose=False, sha256=bad)
    assert bad in str(info.value) and good in str(info.value)
    assert os.listdir(tmp_path / 'other') == [] # a bad download is not cached

    # Local files are checked too.
    local = tmp_path / 'local.bin'
    local.write_bytes(BODY)
    with util.open_url(str(local), sha256=good) as f:
        assert f.read() == BODY
    with pytest.raises(IOError, match='SHA-256 mismatch'):
        util.open_url(str(local), sha256=bad)

def test_404_is_one_clear_message_without_retries(server, tmp_path):
    url = server.url('/missing.pkl')
    with pytest.raises(util.DownloadError) as info:
        util.open_url(url, cache_dir=str(tmp_path), num_attempts=3, verbose=False)
    assert str(info.value) == f'Could not download "{url}": the server answered 404 Not Found; check the address.'
    assert info.value.__cause__ is None and info.value.__suppress_context__ # no chained traceback
    assert server.requests == ['/missing.pkl'] # not retried
    assert os.listdir(tmp_path) == []

def test_body_cut_short_leaves_no_file(tmp_path, capsys):
    with LocalServer({'/cut.pkl': BODY}, behaviour={'/cut.pkl': 'short'}) as srv:
        with pytest.raises(util.DownloadError) as info:
            util.open_url(srv.url('/cut.pkl'), cache_dir=str(tmp_path), num_attempts=2, timeout=2)
        assert srv.requests == ['/cut.pkl'] * 2
    assert 'after 2 attempts' in str(info.value)
    assert 'closed' in str(info.value)
    assert os.listdir(tmp_path) == [] # neither a cache entry nor a temporary file
    assert 'retrying' in capsys.readouterr().err

def test_server_that_never_answers_times_out_retries_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(util.DOWNLOAD_TIMEOUT_ENV, '0.3')
    with LocalServer({'/slow.pkl': BODY}, behaviour={'/slow.pkl': 'hang'}) as srv:
        start = time.time()
        with pytest.raises(util.DownloadError) as info:
            util.open_url(srv.url('/slow.pkl'), cache_dir=str(tmp_path), num_attempts=3, verbose=False)
        elapsed = time.time() - start
        assert srv.requests == ['/slow.pkl'] * 3
    msg = str(info.value)
    assert 'after 3 attempts' in msg and 'no answer within 0.3 s' in msg and util.DOWNLOAD_TIMEOUT_ENV in msg
    assert 'local path' in msg
    assert 0.9 <= elapsed < 10 # three waits of 0.3 s plus two short back-offs
    assert os.listdir(tmp_path) == []

def test_server_error_is_retried_then_reported(tmp_path):
    with LocalServer({'/x.pkl': BODY}, behaviour={'/x.pkl': 'fail'}) as srv:
        with pytest.raises(util.DownloadError, match='503'):
            util.open_url(srv.url('/x.pkl'), cache_dir=str(tmp_path), num_attempts=2, verbose=False, timeout=0.2)
        assert srv.requests == ['/x.pkl'] * 2

def test_unreachable_url_gives_clear_error(tmp_path):
    url = f'http://127.0.0.1:{_free_port()}/detector.pkl'
    with pytest.raises(IOError) as info:
        util.open_url(url, cache_dir=str(tmp_path), num_attempts=2, verbose=False, timeout=0.2)
    msg = str(info.value)
    assert url in msg and 'cannot connect' in msg
    assert 'local path' in msg and util.cache_path_for_url(url) in msg

def test_local_paths_and_file_urls(tmp_path):
    path = tmp_path / 'a b.bin'
    path.write_bytes(b'hello')
    with util.open_url(str(path)) as f:
        assert f.read() == b'hello'
    assert util.open_url(str(path), return_filename=True) == str(path)
    url = path.as_uri() # file:///.../a%20b.bin
    assert url.startswith('file://')
    with util.open_url(url) as f:
        assert f.read() == b'hello'
    with pytest.raises(FileNotFoundError, match='nope.bin'):
        util.open_url(str(tmp_path / 'nope.bin'))
    with pytest.raises(FileNotFoundError):
        util.open_url((tmp_path / 'nope.bin').as_uri())

def test_is_url():
    assert util.is_url('https://example.com/x.pkl')
    assert util.is_url('http://127.0.0.1:8000/x')
    assert not util.is_url('/tmp/x.pkl')
    assert not util.is_url('file:///tmp/x.pkl')
    assert util.is_url('file:///tmp/x.pkl', allow_file_urls=True)
    assert not util.is_url(None)

#----------------------------------------------------------------------------

def test_easydict():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d == {'a': 1, 'b': 2} and d.a == 1 and d['b'] == 2
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        _ = d.missing
    with pytest.raises(AttributeError):
        del d.missing
    assert getattr(d, 'missing', 7) == 7 and vars(d) == {}   # attributes live in the dict only
    nested = dnnlib.EasyDict(x=dnnlib.EasyDict(y=[1]))
    for twin in (copy.deepcopy(nested), pickle.loads(pickle.dumps(nested))):
        assert type(twin) is dnnlib.EasyDict and type(twin.x) is dnnlib.EasyDict and twin == nested
        assert twin.x.y is not nested.x.y

def test_construct_class_by_name():
    obj = util.construct_class_by_name(class_name='dnnlib.util.EasyDict', x=3)
    assert isinstance(obj, dnnlib.EasyDict) and obj.x == 3
    assert util.call_func_by_name(3, 4, func_name='math.hypot') == 5.0
    assert util.get_obj_by_name('os.path.join') is os.path.join
    module, name = util.get_module_from_obj_name('os.path.join')
    assert module is os.path and name == 'join'
    with pytest.raises(AttributeError, match='no attribute "Nope"'):
        util.construct_class_by_name(class_name='dnnlib.util.Nope')
    with pytest.raises(ImportError):
        util.get_obj_by_name('no_such_package_xyz.Thing')

def test_name_lookup_reports_the_real_import_error(tmp_path, monkeypatch):
    # A module that exists but fails to import: its own error, not "cannot find".
    (tmp_path / 'broken_mod_for_lookup.py').write_text('import no_such_dependency_xyz\nclass Thing: pass\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match='no_such_dependency_xyz'):
        util.construct_class_by_name(class_name='broken_mod_for_lookup.Thing')
    with pytest.raises(TypeError, match='not callable'):
        util.call_func_by_name(func_name='math.pi')

def test_format_time():
    assert util.format_time(0) == '0s'
    assert util.format_time(59.4) == '59s'
    assert util.format_time(125) == '2m 05s'
    assert util.format_time(3 * 3600 + 4 * 60 + 5) == '3h 04m 05s'
    assert util.format_time(2 * 86400 + 3 * 3600 + 4 * 60) == '2d 03h 04m'

def test_logger_tees_stdout(tmp_path):
    log = tmp_path / 'log.txt'
    old_stdout = sys.stdout
    old_stderr = sys.stderr
    with util.Logger(str(log)):
        print('to both')
        print('an error', file=sys.stderr)
        sys.stdout.write(b'bytes too\n')
        assert log.read_text() == 'to both\nan error\nbytes too\n'   # flushed as written
    assert sys.stdout is old_stdout and sys.stderr is old_stderr
    with util.Logger(str(log), file_mode='a'):
        print('appended')
    assert log.read_text().endswith('bytes too\nappended\n')

#----------------------------------------------------------------------------
