SELECT {columns} FROM {schema}.tasks AS t WHERE queue = %(queue)s AND id = %(id)s
