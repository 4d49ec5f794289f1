// Command argocd-lua runs an Argo CD resource health check (a health.lua) the way Argo CD's controller does,
// in gopher-lua, on objects read from stdin, and prints Argo CD's verdict for each.
//
//	argocd-lua [-open-libs] SCRIPT < objects.jsonl > verdicts.jsonl
//
// One JSON object per input line (a resource as the API server serves it); one JSON line per object on
// output: {"status": ..., "message": ...} as Argo CD would show it, or {"error": ...} where Argo CD would
// report the script as failing.
//
// What it reproduces of Argo CD (util/lua/lua.go in argoproj/argo-cd, read for this; no code taken):
//   - a fresh gopher-lua state per object; without -open-libs (a health check configured in argocd-cm
//     without resource.customizations.useOpenLibs) no standard library is opened except package, base
//     and table, plus an "os" table with time() only (Argo CD's safe os has time and date): string,
//     math, io, debug and coroutine are absent; -open-libs opens them all (Argo CD's built-in checks);
//   - the object as the global `obj`, its JSON numbers as Lua numbers, null as nil;
//   - the script run with DoString under a one-second deadline; the value left on top of the stack is
//     the verdict: it must be a table, its "status" a string and one of Argo CD's health codes (anything
//     else becomes Unknown, "Lua returned an invalid health status"), its "message" a string or absent.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

var healthCodes = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

type verdict struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

// toLua turns a decoded JSON value into the Lua value Argo CD hands to the script.
func toLua(l *lua.LState, v interface{}) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case string:
		return lua.LString(x)
	case json.Number:
		// The API server's objects reach Argo CD as int64 or float64; both become Lua numbers.
		if i, err := x.Int64(); err == nil {
			return lua.LNumber(i)
		}
		f, _ := x.Float64()
		return lua.LNumber(f)
	case []interface{}:
		t := l.CreateTable(len(x), 0)
		for _, item := range x {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]interface{}:
		t := l.CreateTable(0, len(x))
		for k, item := range x {
			t.RawSetH(lua.LString(k), toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

func osTime(l *lua.LState) int {
	l.Push(lua.LNumber(time.Now().Unix()))
	return 1
}

func newState(openLibs bool) *lua.LState {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	if !openLibs {
		for _, lib := range []struct {
			name string
			open lua.LGFunction
		}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
			if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
				panic(err)
			}
		}
		l.SetGlobal(lua.OsLibName, l.SetFuncs(l.NewTable(), map[string]lua.LGFunction{"time": osTime}))
	}
	return l
}

func judge(script string, obj map[string]interface{}, openLibs bool) verdict {
	l := newState(openLibs)
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return verdict{Error: err.Error()}
	}
	top := l.Get(-1)
	table, ok := top.(*lua.LTable)
	if !ok {
		return verdict{Error: fmt.Sprintf("expect table output from Lua script, not %s", top.Type().String())}
	}
	status, ok := table.RawGetString("status").(lua.LString)
	if !ok {
		return verdict{Error: fmt.Sprintf("the returned table's status is a %s, not a string", table.RawGetString("status").Type())}
	}
	var message string
	switch m := table.RawGetString("message").(type) {
	case lua.LString:
		message = string(m)
	case *lua.LNilType:
	default:
		return verdict{Error: fmt.Sprintf("the returned table's message is a %s, not a string", m.Type())}
	}
	if !healthCodes[string(status)] {
		return verdict{Status: "Unknown", Message: "Lua returned an invalid health status"}
	}
	return verdict{Status: string(status), Message: message}
}

func main() {
	openLibs := flag.Bool("open-libs", false, "open every standard library (Argo CD's built-in checks)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua [-open-libs] SCRIPT < objects.jsonl")
		os.Exit(2)
	}
	script, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var obj map[string]interface{}
		dec := json.NewDecoder(bytes.NewReader(in.Bytes()))
		dec.UseNumber()
		if err := dec.Decode(&obj); err != nil {
			fmt.Fprintf(os.Stderr, "bad input line: %v\n", err)
			os.Exit(1)
		}
		if err := out.Encode(judge(string(script), obj, *openLibs)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
