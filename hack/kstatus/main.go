// Command kstatus prints what sigs.k8s.io/cli-utils' kstatus library (the health assessment Flux
// and kubectl-style tools use) computes for each Kubernetes object read from stdin.
//
// Input: one or more objects as JSON or YAML documents (a v1 List is expanded). Output: one JSON
// object per input object and line: {"kind", "namespace", "name", "status", "message"}, where
// status is one of InProgress, Failed, Current, Terminating, NotFound, Unknown.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	decoder := utilyaml.NewYAMLOrJSONDecoder(in, 4096)
	encoder := json.NewEncoder(out)
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading objects: %w", err)
		}
		if len(raw) == 0 || string(raw) == "null" {
			continue // an empty YAML document
		}
		// The unstructured scheme keeps integers int64 (plain encoding/json would make them float64,
		// which kstatus' generation accessors refuse) and understands v1 Lists.
		decoded, err := runtime.Decode(unstructured.UnstructuredJSONScheme, raw)
		if err != nil {
			return fmt.Errorf("reading object: %w", err)
		}
		var objects []unstructured.Unstructured
		switch obj := decoded.(type) {
		case *unstructured.UnstructuredList:
			objects = obj.Items
		case *unstructured.Unstructured:
			objects = []unstructured.Unstructured{*obj}
		default:
			return fmt.Errorf("unexpected object %T", decoded)
		}
		for i := range objects {
			res, err := status.Compute(&objects[i])
			if err != nil {
				return fmt.Errorf("%s %s: %w", objects[i].GetKind(), objects[i].GetName(), err)
			}
			if err := encoder.Encode(result{
				Kind:      objects[i].GetKind(),
				Namespace: objects[i].GetNamespace(),
				Name:      objects[i].GetName(),
				Status:    res.Status.String(),
				Message:   res.Message,
			}); err != nil {
				return err
			}
		}
	}
}
