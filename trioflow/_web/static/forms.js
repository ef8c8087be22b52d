// Forms built from a JSON Schema (as msgspec writes them): an object's properties become
// labelled inputs (text, number, checkbox, select for an enum); anything else, or no
// schema at all, is a JSON text area. read() returns the value, or throws with the field.

function resolve(schema, root) {
  while (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    schema = (root.$defs || {})[name];
  }
  return schema;
}

// `X | None` is anyOf [X, null]: the field is X, and left empty it is null.
function unwrapOptional(schema, root) {
  schema = resolve(schema, root);
  if (schema && schema.anyOf) {
    const rest = schema.anyOf.filter((s) => resolve(s, root).type !== "null");
    if (rest.length === 1) return { schema: resolve(rest[0], root), nullable: true };
  }
  return { schema, nullable: false };
}

let counter = 0;

function jsonField(label, initial) {
  const id = `field-${++counter}`;
  const wrap = document.createElement("div");
  wrap.className = "field";
  wrap.innerHTML = `<label for="${id}"></label><textarea id="${id}" rows="3"></textarea>`;
  wrap.querySelector("label").textContent = label;
  const area = wrap.querySelector("textarea");
  area.value = initial;
  return {
    element: wrap,
    read() {
      const text = area.value.trim();
      if (!text) return null;
      try {
        return JSON.parse(text);
      } catch (error) {
        throw new Error(`${label}: not valid JSON (${error.message})`);
      }
    },
  };
}

function scalarField(name, schema, required, nullable) {
  const id = `field-${++counter}`;
  const wrap = document.createElement("div");
  wrap.className = "field";
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = required ? `${name} *` : name;
  let input;
  if (schema.enum) {
    input = document.createElement("select");
    for (const option of schema.enum) {
      const item = document.createElement("option");
      item.value = JSON.stringify(option);
      item.textContent = String(option);
      input.append(item);
    }
  } else {
    input = document.createElement("input");
    input.type =
      schema.type === "boolean" ? "checkbox" : ["integer", "number"].includes(schema.type) ? "number" : "text";
    if (schema.type === "integer") input.step = "1";
    if (schema.type === "number") input.step = "any";
  }
  input.id = id;
  input.name = name;
  if ("default" in schema && schema.default !== null) {
    if (input.type === "checkbox") input.checked = Boolean(schema.default);
    else if (schema.enum) input.value = JSON.stringify(schema.default);
    else input.value = String(schema.default);
  }
  if (input.type === "checkbox") wrap.append(input, label);
  else wrap.append(label, input);
  return {
    name,
    element: wrap,
    read() {
      if (schema.enum) return JSON.parse(input.value);
      if (input.type === "checkbox") return input.checked;
      if (input.value === "") {
        if (required && !nullable) throw new Error(`${name} is required`);
        return undefined;
      }
      if (input.type === "number") return Number(input.value);
      return input.value;
    },
  };
}

const SCALARS = ["string", "integer", "number", "boolean"];

export function buildForm(schema, what = "data") {
  const root = schema || {};
  const top = resolve(schema, root);
  const props = top && top.type === "object" && top.properties;
  if (!props) return jsonField(`${what} (JSON)`, top && top.type === "object" ? "{}" : "");
  const required = new Set(top.required || []);
  const fieldset = document.createElement("div");
  fieldset.className = "fields";
  const fields = [];
  for (const [name, raw] of Object.entries(props)) {
    const { schema: prop, nullable } = unwrapOptional(raw, root);
    const field =
      prop && (prop.enum || SCALARS.includes(prop.type))
        ? scalarField(name, prop, required.has(name), nullable)
        : { name, ...jsonField(`${name} (JSON)`, "") };
    fields.push(field);
    fieldset.append(field.element);
  }
  return {
    element: fieldset,
    read() {
      const value = {};
      for (const field of fields) {
        const v = field.read();
        if (v !== undefined && !(v === null && !required.has(field.name))) value[field.name] = v;
      }
      return value;
    },
  };
}
