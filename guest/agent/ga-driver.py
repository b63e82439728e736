# SPDX-License-Identifier: MIT
# Python REPL driver of the schedulerd guest agent (embedded into sbx-agent and
# run as `python3 -u -s -c <this>`). Protocol with the agent, on fds 3 and 4:
#   fd 3 (agent -> driver): u32be code_len, u32be env_len, env ("K=V\0"...), code (UTF-8)
#   fd 4 (driver -> agent): "ready\n" once, then per exec
#                           "done <rc> <user_us> <sys_us> <maxrss_kb>\n"
# Code runs in __main__'s namespace, so state persists between execs.
def _sbx_driver():
    import os, sys, struct, traceback, resource
    import __main__
    rfd, wfd, me = 3, 4, os.getpid()
    os.set_inheritable(rfd, False)
    os.set_inheritable(wfd, False)
    g = __main__.__dict__
    g.pop('_sbx_driver', None)
    sys.argv = ['']

    def readn(n):
        b = bytearray()
        while len(b) < n:
            c = os.read(rfd, n - len(b))
            if not c:
                os._exit(0)
            b += c
        return bytes(b)

    os.write(wfd, b'ready\n')
    while True:
        clen, elen = struct.unpack('>II', readn(8))
        envb = readn(elen) if elen else b''
        code = readn(clen).decode('utf-8', 'surrogateescape')
        saved = dict(os.environb)
        for kv in envb.split(b'\0'):
            if kv:
                k, _, v = kv.partition(b'=')
                os.environb[k] = v
        rc = 0
        try:
            exec(compile(code, '<exec>', 'exec'), g)
        except SystemExit as e:
            c = e.code
            if c is None:
                rc = 0
            elif isinstance(c, int):
                rc = c & 0xff
            else:
                try:
                    print(c, file=sys.stderr)
                except BaseException:
                    pass
                rc = 1
        except BaseException as e:
            try:
                traceback.print_exception(type(e), e, e.__traceback__.tb_next)
            except BaseException:
                pass
            rc = 1
        if os.getpid() != me:
            os._exit(rc)
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except BaseException:
                pass
        os.environb.clear()
        os.environb.update(saved)
        t = os.times()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        line = 'done %d %d %d %d\n' % (rc, int((t[0] + t[2]) * 1e6), int((t[1] + t[3]) * 1e6), ru.ru_maxrss)
        os.write(wfd, line.encode())


_sbx_driver()
