"""Approximate worst-case stack per entry point from a thumbv7m assembly file.

Sums each function's `push` and `sub sp` along the deepest `bl` call chain (recursion cut,
calls through pointers and compiler builtins not seen): an estimate, not a proof.
"""
import re,sys,collections
s=open(sys.argv[1]).read().split('\n')
func=None; frames=collections.defaultdict(int); calls=collections.defaultdict(set)
for line in s:
    m=re.match(r'^([A-Za-z_$.][\w$.]*):\s*$',line)
    if m and not m.group(1).startswith('.L') and not m.group(1).startswith('$'):
        func=m.group(1); continue
    if func is None: continue
    l=line.strip()
    m=re.match(r'push(?:\.w)?\s+\{([^}]*)\}',l)
    if m: frames[func]+=4*len(m.group(1).split(','))
    m=re.match(r'sub(?:\.w)?\s+sp,\s*(?:sp,\s*)?#(\d+)',l)
    if m: frames[func]+=int(m.group(1))
    m=re.match(r'(?:bl|b\.w|b)\s+([A-Za-z_$][\w$.]*)',l)
    if m and l.startswith('bl'): calls[func].add(m.group(1))
    m=re.match(r'vpush',l)
import functools
@functools.lru_cache(None)
def depth(f,seen=()):
    if f in seen: return 0
    return frames.get(f,0)+max([depth(c,seen+(f,)) for c in calls.get(f,())]+[0])
for f in ['dev_restore','dev_save','dev_apply','dev_send','dev_save_stream','dev_load','dev_boot']:
    print(f, 'own', frames.get(f), 'max path', depth(f))
print('largest frames:')
for f,v in sorted(frames.items(),key=lambda x:-x[1])[:8]: print(v, f[:120])
