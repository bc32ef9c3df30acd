package httpapi

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	rtm "github.com/galaxy-platform/rtmanager"
)

type oaParam struct {
	Ref  string `yaml:"$ref"`
	Name string `yaml:"name"`
	In   string `yaml:"in"`
}

type oaOperation struct {
	Parameters []oaParam            `yaml:"parameters"`
	Responses  map[string]yaml.Node `yaml:"responses"`
}

type oaDoc struct {
	OpenAPI string `yaml:"openapi"`
	Servers []struct {
		URL string `yaml:"url"`
	} `yaml:"servers"`
	Paths      map[string]map[string]yaml.Node `yaml:"paths"`
	Components struct {
		Parameters map[string]oaParam `yaml:"parameters"`
		Schemas    map[string]struct {
			Enum []string `yaml:"enum"`
		} `yaml:"schemas"`
	} `yaml:"components"`
}

func loadOpenAPI(t *testing.T) oaDoc {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "openapi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc oaDoc
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("docs/openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.0") {
		t.Fatalf("openapi %q, want 3.0.x", doc.OpenAPI)
	}
	return doc
}

// TestOpenAPI_routes_documented fails when a route the API serves (the table NewAPI registers) is
// missing from docs/openapi.yaml or lacks its game_id parameter or its auth answers, and when the
// document describes a route the API does not serve.
func TestOpenAPI_routes_documented(t *testing.T) {
	doc := loadOpenAPI(t)
	if len(doc.Servers) != 1 || doc.Servers[0].URL != BasePath {
		t.Fatalf("servers %+v, want one with url %s", doc.Servers, BasePath)
	}
	resolve := func(p oaParam) oaParam {
		if name, ok := strings.CutPrefix(p.Ref, "#/components/parameters/"); ok {
			return doc.Components.Parameters[name]
		}
		return p
	}
	served := map[string]bool{}
	for _, rt := range routes() {
		method := strings.ToLower(rt.method)
		served[rt.path+" "+method] = true
		item, ok := doc.Paths[rt.path]
		if !ok {
			t.Errorf("%s %s is not documented", rt.method, rt.path)
			continue
		}
		node, ok := item[method]
		if !ok {
			t.Errorf("%s %s is not documented (the path is)", rt.method, rt.path)
			continue
		}
		var op oaOperation
		if err := node.Decode(&op); err != nil {
			t.Errorf("%s %s: %v", rt.method, rt.path, err)
			continue
		}
		params := op.Parameters
		if n, ok := item["parameters"]; ok {
			var shared []oaParam
			if err := n.Decode(&shared); err != nil {
				t.Errorf("%s parameters: %v", rt.path, err)
			}
			params = append(params, shared...)
		}
		var names []string
		for _, p := range params {
			p = resolve(p)
			names = append(names, p.In+":"+p.Name)
		}
		if strings.Contains(rt.path, "{game_id}") && !slices.Contains(names, "path:game_id") {
			t.Errorf("%s %s does not document the game_id path parameter", rt.method, rt.path)
		}
		if !slices.Contains(names, "header:"+CallerHeader) {
			t.Errorf("%s %s does not document %s", rt.method, rt.path, CallerHeader)
		}
		want := []string{"200", "400", "401", "403", "500", "503"}
		if rt.path == "/version" {
			// It takes no input and reads nothing but the binary: never 400 nor 503.
			want = []string{"200", "401", "403", "500"}
		}
		if rt.mutates {
			want = append(want, "202")
		}
		for _, code := range want {
			if _, ok := op.Responses[code]; !ok {
				t.Errorf("%s %s does not document response %s", rt.method, rt.path, code)
			}
		}
	}
	for path, item := range doc.Paths {
		for method := range item {
			if method == "parameters" || method == "summary" || method == "description" {
				continue
			}
			if !served[path+" "+method] {
				t.Errorf("%s %s is documented but not served", strings.ToUpper(method), path)
			}
		}
	}
}

// TestOpenAPI_errorCodes_documented keeps the document's ErrorCode enum equal to the codes the API
// answers with, and each of them mapped to a status of its own class.
func TestOpenAPI_errorCodes_documented(t *testing.T) {
	doc := loadOpenAPI(t)
	codes := map[rtm.ErrorCode]int{
		rtm.CodeInvalidRequest:       http.StatusBadRequest,
		rtm.CodeUnauthenticated:      http.StatusUnauthorized,
		rtm.CodeForbidden:            http.StatusForbidden,
		rtm.CodeRuntimeNotFound:      http.StatusNotFound,
		rtm.CodeRuntimeRunning:       http.StatusConflict,
		rtm.CodeConflict:             http.StatusConflict,
		rtm.CodePatchRolledBack:      http.StatusConflict,
		rtm.CodeImageRefNotSemver:    http.StatusUnprocessableEntity,
		rtm.CodeSemverPatchOnly:      http.StatusUnprocessableEntity,
		rtm.CodeStartConfigInvalid:   http.StatusUnprocessableEntity,
		rtm.CodeImagePullFailed:      http.StatusUnprocessableEntity,
		rtm.CodeContainerStartFailed: http.StatusUnprocessableEntity,
		rtm.CodeServiceUnavailable:   http.StatusServiceUnavailable,
		rtm.CodeInternalError:        http.StatusInternalServerError,
	}
	var want, got []string
	for code, status := range codes {
		want = append(want, string(code))
		if s := StatusFor(code); s != status {
			t.Errorf("StatusFor(%s) = %d, want %d", code, s, status)
		}
	}
	got = append(got, doc.Components.Schemas["ErrorCode"].Enum...)
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("ErrorCode enum %v, want %v", got, want)
	}
	if s := StatusFor("no_such_code"); s != http.StatusInternalServerError {
		t.Fatalf("an unknown code maps to %d", s)
	}
}
